"""Application services: queued ephemeral data (typing, receipts, presence) for services whose
registration asks for it (receive_ephemeral)."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0006_notification_counts')]

    initial = False

    operations = [
        ops.CreateModel(
            name='AppServiceEphemeral',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('appservice_id', fields.CharField(max_length=255)),
                ('coalesce_key', fields.CharField(max_length=64)),
                ('edu_json', fields.TextField(unique=False)),
                ('created_ts', fields.BigIntField()),
            ],
            options={'table': 'appservice_ephemeral', 'app': 'models', 'unique_together': (('appservice_id', 'coalesce_key'),), 'indexes': [Index(fields=['appservice_id', 'id'])], 'pk_attr': 'id', 'table_description': 'Ephemeral data (typing, a receipt, presence) waiting for a service that asked for it.'},
            bases=['Model'],
        ),
    ]
