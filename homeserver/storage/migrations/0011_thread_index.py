"""/threads: a room's relations of one type (its threads) without a scan."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index


class Migration(migrations.Migration):
    dependencies = [('models', '0010_event_timestamps')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='EventRelation',
            index=Index(fields=['room_id', 'rel_type']),
        ),
    ]
