"""Push notifications: pushers (HTTP push gateways of users' devices) and the notifications
themselves, written in the transaction of the event that caused them."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0007_appservice_ephemeral')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Notification',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user_id', fields.CharField(max_length=255)),
                ('room_id', fields.CharField(max_length=255)),
                ('event_id', fields.CharField(max_length=255)),
                ('stream_ordering', fields.BigIntField()),
                ('actions', fields.TextField(unique=False)),
                ('highlight', fields.BooleanField(default=False)),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'notifications', 'app': 'models', 'indexes': [Index(fields=['user_id', 'stream_ordering'])], 'pk_attr': 'id', 'table_description': 'An event that notified a user (the actions of the push rule that matched).'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Pusher',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user_id', fields.CharField(db_index=True, max_length=255)),
                ('app_id', fields.CharField(max_length=64)),
                ('pushkey', fields.CharField(max_length=512)),
                ('kind', fields.CharField(max_length=32)),
                ('app_display_name', fields.CharField(max_length=255)),
                ('device_display_name', fields.CharField(max_length=255)),
                ('profile_tag', fields.CharField(null=True, max_length=255)),
                ('lang', fields.CharField(max_length=255)),
                ('data', fields.TextField(unique=False)),
                ('device_id', fields.CharField(null=True, max_length=255)),
                ('created_ts', fields.BigIntField()),
                ('last_stream_ordering', fields.BigIntField(default=0)),
                ('retry_at_ts', fields.BigIntField(default=0)),
                ('backoff_ms', fields.BigIntField(default=0)),
            ],
            options={'table': 'pushers', 'app': 'models', 'unique_together': (('app_id', 'pushkey', 'user_id'),), 'pk_attr': 'id', 'table_description': "One HTTP pusher of a user: a push gateway URL and the device's pushkey."},
            bases=['Model'],
        ),
    ]
