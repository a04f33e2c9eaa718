"""Tortoise models: the media repository (uploads, cached remote media, thumbnails).

The bytes live on disk, content-addressed by SHA-256 (see storage/media.py); these rows only
map an mxc:// URI to a file and its metadata. Comments here are # comments on purpose: model
docstrings become SQL table comments.
"""

from tortoise import fields
from tortoise.models import Model


class MediaItem(Model):
    # One mxc://server_name/media_id: local uploads and cached copies of remote media.
    # sha256 (and size) stay NULL while an ID made by POST /media/v1/create awaits its upload.
    id = fields.BigIntField(primary_key=True)
    server_name = fields.CharField(max_length=255)
    media_id = fields.CharField(max_length=255)
    sha256 = fields.CharField(max_length=64, null=True)
    content_type = fields.CharField(max_length=255, null=True)
    size = fields.BigIntField(null=True)
    upload_name = fields.CharField(max_length=255, null=True)
    # The uploader (local media only).
    user_id = fields.CharField(max_length=255, null=True, db_index=True)
    created_ts = fields.BigIntField()
    # For a created but not yet uploaded ID: when it stops accepting an upload.
    unused_expires_ts = fields.BigIntField(null=True)

    class Meta:
        table = "media"
        unique_together = (("server_name", "media_id"),)


class MediaThumbnail(Model):
    # A generated thumbnail, keyed by the media and the requested (clamped) box and method.
    id = fields.BigIntField(primary_key=True)
    server_name = fields.CharField(max_length=255)
    media_id = fields.CharField(max_length=255)
    width = fields.IntField()
    height = fields.IntField()
    method = fields.CharField(max_length=8)
    sha256 = fields.CharField(max_length=64)
    content_type = fields.CharField(max_length=64)
    size = fields.BigIntField()
    created_ts = fields.BigIntField()

    class Meta:
        table = "media_thumbnails"
        unique_together = (("server_name", "media_id", "width", "height", "method"),)
