"""The shared base of every bridge: the transaction server (hs_token check, txnId
de-duplication), the intent API (act as puppet users) and a persistent mapping store."""

from bridges.appservice.bridge import Bridge
from bridges.appservice.config import BridgeConfig, BridgeConfigError, load_bridge_config
from bridges.appservice.intent import HomeserverClient, Intent, MatrixRequestError
from bridges.appservice.server import AppServiceServer
from bridges.appservice.store import Store

__all__ = ["AppServiceServer", "Bridge", "BridgeConfig", "BridgeConfigError", "HomeserverClient",
           "Intent", "MatrixRequestError", "Store", "load_bridge_config"]
