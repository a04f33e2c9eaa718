"""Tortoise model: the blind index behind /search (handlers/search.py, docs/at-rest-encryption.md).

It holds no text: one row per distinct word of a searchable event field, the word replaced by a
keyed hash (HMAC-SHA256 under data_dir/search_index.key, truncated to 16 bytes, hex)."""

from tortoise import fields
from tortoise.models import Model


class SearchToken(Model):
    """One word of one event, as a keyed hash (the blind search index).

    `field` says where the word is (events/search_tokens.py FIELDS: 1 body, 2 room name,
    3 topic) and `tokens` how many distinct words that field has (ranking prefers short
    matches; the number of the event's rows shows it anyway)."""

    id = fields.BigIntField(primary_key=True)
    token_hash = fields.CharField(max_length=32)
    room_id = fields.CharField(max_length=255)
    stream_ordering = fields.BigIntField()
    field = fields.SmallIntField()
    tokens = fields.SmallIntField()
    # Redactions delete an event's rows by its ID.
    event_id = fields.CharField(max_length=255, db_index=True)

    class Meta:
        table = "search_index"
        # The AND query reads only this index: the words' hashes, then rooms and positions.
        indexes = (("token_hash", "room_id", "stream_ordering", "field", "tokens"),)
