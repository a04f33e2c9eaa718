"""Schema migrations (tortoise-orm's migration framework), applied at start-up in order.

To change the schema: edit the models, run
    python -m tortoise -c <module>.TORTOISE_ORM makemigrations models -n <name>
with TORTOISE_ORM = homeserver.storage.database.tortoise_config("sqlite:///tmp/x.db"), then review
the file: the autodetector re-adds primary keys declared with generated=False (drop those
RemoveField/AddField/AddIndex pairs) and needs db_default= for new NOT NULL columns.
Never edit a migration that has been released; add a new one.
"""
