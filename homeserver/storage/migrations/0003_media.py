"""The media repository: uploads and cached remote media, and their thumbnails."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0002_federation')]

    initial = False

    operations = [
        ops.CreateModel(
            name='MediaItem',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('server_name', fields.CharField(max_length=255)),
                ('media_id', fields.CharField(max_length=255)),
                ('sha256', fields.CharField(null=True, max_length=64)),
                ('content_type', fields.CharField(null=True, max_length=255)),
                ('size', fields.BigIntField(null=True)),
                ('upload_name', fields.CharField(null=True, max_length=255)),
                ('user_id', fields.CharField(null=True, db_index=True, max_length=255)),
                ('created_ts', fields.BigIntField()),
                ('unused_expires_ts', fields.BigIntField(null=True)),
            ],
            options={'table': 'media', 'app': 'models', 'unique_together': (('server_name', 'media_id'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='MediaThumbnail',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('server_name', fields.CharField(max_length=255)),
                ('media_id', fields.CharField(max_length=255)),
                ('width', fields.IntField()),
                ('height', fields.IntField()),
                ('method', fields.CharField(max_length=8)),
                ('sha256', fields.CharField(max_length=64)),
                ('content_type', fields.CharField(max_length=64)),
                ('size', fields.BigIntField()),
                ('created_ts', fields.BigIntField()),
            ],
            options={'table': 'media_thumbnails', 'app': 'models', 'unique_together': (('server_name', 'media_id', 'width', 'height', 'method'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
    ]
