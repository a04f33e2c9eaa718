from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0001_initial')]

    initial = False

    operations = [
        ops.CreateModel(
            name='FederationDestination',
            fields=[
                ('destination', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=255)),
                ('retry_at_ts', fields.BigIntField(default=0)),
                ('backoff_ms', fields.BigIntField(default=0)),
                ('last_success_ts', fields.BigIntField(null=True)),
            ],
            options={'table': 'federation_destinations', 'app': 'models', 'pk_attr': 'destination'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='FederationOutbox',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('destination', fields.CharField(max_length=255)),
                ('event_id', fields.CharField(null=True, max_length=255)),
                ('edu_json', fields.TextField(null=True, unique=False)),
                ('txn_id', fields.CharField(null=True, max_length=64)),
                ('created_ts', fields.BigIntField()),
            ],
            options={'table': 'federation_outbox', 'app': 'models', 'indexes': [Index(fields=['destination', 'id'])], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='InboundTransaction',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('origin', fields.CharField(max_length=255)),
                ('txn_id', fields.CharField(max_length=255)),
                ('response_json', fields.TextField(unique=False)),
                ('received_ts', fields.BigIntField()),
            ],
            options={'table': 'federation_inbound_txns', 'app': 'models', 'unique_together': (('origin', 'txn_id'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='RejectedEvent',
            fields=[
                ('event_id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=255)),
                ('room_id', fields.CharField(max_length=255)),
                ('reason', fields.TextField(unique=False)),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'rejected_events', 'app': 'models', 'pk_attr': 'event_id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ServerKey',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('server_name', fields.CharField(max_length=255)),
                ('key_id', fields.CharField(max_length=255)),
                ('verify_key', fields.CharField(max_length=128)),
                ('valid_until_ts', fields.BigIntField()),
                ('fetched_ts', fields.BigIntField()),
            ],
            options={'table': 'server_keys', 'app': 'models', 'unique_together': (('server_name', 'key_id'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Event',
            name='outlier',
            field=fields.BooleanField(default=False, db_default=False),
        ),
        ops.AddField(
            model_name='Event',
            name='soft_failed',
            field=fields.BooleanField(default=False, db_default=False),
        ),
    ]
