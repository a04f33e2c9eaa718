"""Application services: registrations (registration.py), the handler — requester,
masquerading, namespaces, registration, interest, queries, ping (handler.py) — and the durable
transaction sender (sender.py)."""

from homeserver.handlers.appservice.handler import MASSAGED_TS, AppServiceHandler
from homeserver.handlers.appservice.registration import AppService
from homeserver.handlers.appservice.sender import AppServiceSender

__all__ = ["MASSAGED_TS", "AppService", "AppServiceHandler", "AppServiceSender"]
