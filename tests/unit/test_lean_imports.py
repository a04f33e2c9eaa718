"""import_without: a library imported while some optional packages look absent."""

import sys
import textwrap

from homeserver.lean_imports import import_without


def test_hidden_package_absent_during_import_and_importable_after(tmp_path, monkeypatch):
    (tmp_path / "nexa_opt_dep.py").write_text("VALUE = 1\n")
    (tmp_path / "nexa_lib_under_test.py").write_text(textwrap.dedent("""
        try:
            import nexa_opt_dep
        except ImportError:
            nexa_opt_dep = None
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("nexa_opt_dep", "nexa_lib_under_test"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    lib = import_without("nexa_lib_under_test", hidden=("nexa_opt_dep",))
    assert lib.nexa_opt_dep is None
    import nexa_opt_dep  # our own later import still works: failed imports are not cached
    assert nexa_opt_dep.VALUE == 1
    assert not any(type(f).__name__ == "_Hide" for f in sys.meta_path)


def test_socketio_server_loads_without_its_client_dependencies():
    import homeserver.realtime as realtime

    assert hasattr(realtime.socketio, "AsyncServer")
