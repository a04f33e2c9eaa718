"""End-to-end encryption: device, one-time, fallback and cross-signing keys, the device list
stream and remote device list cache, to-device inbox and its transaction IDs, key backups."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0003_media')]

    initial = False

    operations = [
        ops.CreateModel(
            name='CrossSigningKey',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user_id', fields.CharField(max_length=255)),
                ('key_type', fields.CharField(max_length=32)),
                ('public_key', fields.CharField(max_length=255)),
                ('key_json', fields.TextField(unique=False)),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'e2e_cross_signing_keys', 'app': 'models', 'unique_together': (('user_id', 'key_type'),), 'pk_attr': 'id', 'table_description': 'A local user master, self_signing or user_signing key.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='CrossSigningSignature',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('signer_user_id', fields.CharField(max_length=255)),
                ('signer_key_id', fields.CharField(max_length=255)),
                ('target_user_id', fields.CharField(max_length=255)),
                ('target_key_id', fields.CharField(max_length=255)),
                ('signature', fields.TextField(unique=False)),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'e2e_cross_signing_signatures', 'app': 'models', 'unique_together': (('signer_user_id', 'signer_key_id', 'target_user_id', 'target_key_id'),), 'indexes': [Index(fields=['target_user_id', 'target_key_id'])], 'pk_attr': 'id', 'table_description': 'A signature uploaded through /keys/signatures/upload, merged into keys when served.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='DeviceInboxMessage',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('stream_id', fields.BigIntField()),
                ('user_id', fields.CharField(max_length=255)),
                ('device_id', fields.CharField(max_length=255)),
                ('sender', fields.CharField(max_length=255)),
                ('type', fields.CharField(max_length=255)),
                ('content', fields.TextField(unique=False)),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'device_inbox', 'app': 'models', 'indexes': [Index(fields=['user_id', 'device_id', 'stream_id'])], 'pk_attr': 'id', 'table_description': 'A to-device message waiting for a local device, deleted once the device acknowledged'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='DeviceKeys',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user_id', fields.CharField(max_length=255)),
                ('device_id', fields.CharField(max_length=255)),
                ('key_json', fields.TextField(unique=False)),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'e2e_device_keys', 'app': 'models', 'unique_together': (('user_id', 'device_id'),), 'pk_attr': 'id', 'table_description': 'Identity keys of a local device (signatures checked against its own ed25519 key).'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='DeviceListChange',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('stream_id', fields.BigIntField(db_index=True)),
                ('user_id', fields.CharField(max_length=255)),
                ('device_id', fields.CharField(default='', max_length=255)),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'device_list_changes', 'app': 'models', 'indexes': [Index(fields=['user_id', 'stream_id'])], 'pk_attr': 'id', 'table_description': 'The device list stream: a user (local, or remote and reported by an EDU) changed a'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='FallbackKey',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user_id', fields.CharField(max_length=255)),
                ('device_id', fields.CharField(max_length=255)),
                ('algorithm', fields.CharField(max_length=255)),
                ('key_id', fields.CharField(max_length=255)),
                ('key_json', fields.TextField(unique=False)),
                ('used', fields.BooleanField(default=False)),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'e2e_fallback_keys', 'app': 'models', 'unique_together': (('user_id', 'device_id', 'algorithm'),), 'pk_attr': 'id', 'table_description': 'At most one per device and algorithm, handed out when no one-time key is left.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='OneTimeKey',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user_id', fields.CharField(max_length=255)),
                ('device_id', fields.CharField(max_length=255)),
                ('algorithm', fields.CharField(max_length=255)),
                ('key_id', fields.CharField(max_length=255)),
                ('key_json', fields.TextField(unique=False)),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'e2e_one_time_keys', 'app': 'models', 'unique_together': (('user_id', 'device_id', 'algorithm', 'key_id'),), 'indexes': [Index(fields=['user_id', 'device_id', 'algorithm', 'id'])], 'pk_attr': 'id', 'table_description': 'An unclaimed one-time key, a claim deletes the row it returns (id = upload order).'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='RemoteDeviceList',
            fields=[
                ('user_id', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=255)),
                ('stream_id', fields.BigIntField()),
                ('content', fields.TextField(unique=False)),
                ('valid_from', fields.BigIntField()),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'e2e_remote_device_lists', 'app': 'models', 'pk_attr': 'user_id', 'table_description': 'Cached device list of a remote user who shares a room with a local user: kept current'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='RoomKeyBackupKey',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user_id', fields.CharField(max_length=255)),
                ('version', fields.BigIntField()),
                ('room_id', fields.CharField(max_length=255)),
                ('session_id', fields.CharField(max_length=255)),
                ('first_message_index', fields.BigIntField()),
                ('forwarded_count', fields.BigIntField()),
                ('is_verified', fields.BooleanField()),
                ('session_data', fields.TextField(unique=False)),
            ],
            options={'table': 'room_key_backup_keys', 'app': 'models', 'unique_together': (('user_id', 'version', 'room_id', 'session_id'),), 'pk_attr': 'id', 'table_description': 'One backed-up (encrypted) megolm session key.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='RoomKeyBackupVersion',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('user_id', fields.CharField(db_index=True, max_length=255)),
                ('algorithm', fields.CharField(max_length=255)),
                ('auth_data', fields.TextField(unique=False)),
                ('etag', fields.BigIntField(default=0)),
                ('deleted', fields.BooleanField(default=False)),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'room_key_backup_versions', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A server-side key backup, the version string is the id.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ToDeviceTxn',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('origin', fields.CharField(default='', max_length=255)),
                ('user_id', fields.CharField(max_length=255)),
                ('device_id', fields.CharField(default='', max_length=255)),
                ('txn_id', fields.CharField(max_length=255)),
                ('stream_id', fields.BigIntField()),
                ('ts', fields.BigIntField()),
            ],
            options={'table': 'to_device_txns', 'app': 'models', 'unique_together': (('origin', 'user_id', 'device_id', 'txn_id'),), 'pk_attr': 'id', 'table_description': 'A to-device send already applied: (sender device, txnId) from local clients (origin'},
            bases=['Model'],
        ),
    ]
