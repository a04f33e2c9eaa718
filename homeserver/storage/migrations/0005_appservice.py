"""Application services: the durable per-service outbound queue, its unacknowledged
transactions (stored as sent) and the retry state."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0004_e2e')]

    initial = False

    operations = [
        ops.CreateModel(
            name='AppServiceOutbox',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('appservice_id', fields.CharField(max_length=255)),
                ('event_id', fields.CharField(max_length=255)),
                ('created_ts', fields.BigIntField()),
            ],
            options={'table': 'appservice_outbox', 'app': 'models', 'indexes': [Index(fields=['appservice_id', 'id'])], 'pk_attr': 'id', 'table_description': 'One event waiting for one application service, written in the same transaction as the event.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='AppServiceState',
            fields=[
                ('appservice_id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=255)),
                ('retry_at_ts', fields.BigIntField(default=0)),
                ('backoff_ms', fields.BigIntField(default=0)),
                ('last_success_ts', fields.BigIntField(null=True)),
                ('last_txn_id', fields.CharField(null=True, max_length=64)),
            ],
            options={'table': 'appservice_state', 'app': 'models', 'pk_attr': 'appservice_id', 'table_description': 'Retry state per application service, so a restart honours the backoff.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='AppServiceTxn',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('appservice_id', fields.CharField(max_length=255)),
                ('txn_id', fields.CharField(max_length=64)),
                ('body_json', fields.TextField(unique=False)),
                ('event_count', fields.IntField()),
                ('created_ts', fields.BigIntField()),
            ],
            options={'table': 'appservice_txns', 'app': 'models', 'unique_together': (('appservice_id', 'txn_id'),), 'pk_attr': 'id', 'table_description': 'A transaction given an ID and not yet acknowledged: resent as stored, never rebuilt.'},
            bases=['Model'],
        ),
    ]
