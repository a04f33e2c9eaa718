"""Message search: the blind index (keyed hashes of the words of messages, room names and
topics; storage/models_search.py). New events are indexed as they are stored; events stored
before this migration are not: run `nexa reindex-search` once (the server logs a reminder
while the index is empty and the database holds messages)."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0008_push')]

    initial = False

    operations = [
        ops.CreateModel(
            name='SearchToken',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('token_hash', fields.CharField(max_length=32)),
                ('room_id', fields.CharField(max_length=255)),
                ('stream_ordering', fields.BigIntField()),
                ('field', fields.SmallIntField()),
                ('tokens', fields.SmallIntField()),
                ('event_id', fields.CharField(db_index=True, max_length=255)),
            ],
            options={'table': 'search_index', 'app': 'models', 'indexes': [Index(fields=['token_hash', 'room_id', 'stream_ordering', 'field', 'tokens'])], 'pk_attr': 'id', 'table_description': 'One word of one event, as a keyed hash (the blind search index).'},
            bases=['Model'],
        ),
    ]
