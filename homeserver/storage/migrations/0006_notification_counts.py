"""Unread notification counts per user and room, kept as events are persisted."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0005_appservice')]

    initial = False

    operations = [
        ops.CreateModel(
            name='NotificationCount',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user_id', fields.CharField(max_length=255)),
                ('room_id', fields.CharField(max_length=255)),
                ('notification_count', fields.IntField(default=0)),
                ('highlight_count', fields.IntField(default=0)),
                ('reset_ordering', fields.BigIntField(default=0)),
                ('last_ordering', fields.BigIntField(default=0)),
            ],
            options={'table': 'notification_counts', 'app': 'models', 'unique_together': (('user_id', 'room_id'),), 'pk_attr': 'id', 'table_description': 'Unread notification and highlight counts of one user in one room.'},
            bases=['Model'],
        ),
    ]
