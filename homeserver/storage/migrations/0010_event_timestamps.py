"""/timestamp_to_event: the events of a room by origin_server_ts, for jumping to a date."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index


class Migration(migrations.Migration):
    dependencies = [('models', '0009_search')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Event',
            index=Index(fields=['room_id', 'origin_server_ts']),
        ),
    ]
