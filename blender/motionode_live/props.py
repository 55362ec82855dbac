"""Settings stored in the .blend file: per scene (connection, playback, record)
and per armature object (its joint-to-bone mapping)."""

from __future__ import annotations

import logging

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import session

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"  # what `motionode serve` binds by default


def _suggest_sources(self, context, text):
    """Sources the connected server offers, for the source field's drop-down."""
    return [s for s in session.SESSION.sources if text.lower() in s.lower()]


def _stream_changed(self, context):
    session.SESSION.settings_changed(context.scene)


def _playback_changed(self, context):
    session.SESSION.frame_changed(context.scene)


def _live_changed(self, context):
    if self.live:
        session.SESSION.resume_live(context.scene)


def _is_armature(self, obj):
    return obj.type == "ARMATURE"


class MOTIONODE_PG_joint(bpy.types.PropertyGroup):
    """One joint of the server's skeleton and the bone it drives."""

    joint: StringProperty(name="Joint", description="Joint name in the skeleton")
    bone: StringProperty(
        name="Bone",
        description="Bone this joint drives; empty to leave the joint unused",
    )


class MOTIONODE_PG_armature(bpy.types.PropertyGroup):
    """Per armature object: how the server's joints map onto its bones."""

    mapping: CollectionProperty(type=MOTIONODE_PG_joint)
    mapping_index: IntProperty(name="Joint", default=0)
    skeleton: StringProperty(
        name="Skeleton",
        description="Fingerprint of the skeleton the mapping was made for",
    )
    report: StringProperty(name="Report", description="Joints and bones left unmatched")


class MOTIONODE_PG_scene(bpy.types.PropertyGroup):
    """Per scene: the server, the stream and the character it drives."""

    endpoint: StringProperty(
        name="Server",
        description="The server's control socket (motionode serve prints it)",
        default=DEFAULT_ENDPOINT,
    )
    server_key: StringProperty(
        name="Server Key",
        description=(
            "CURVE only: the server's public key, as its .key file or 40 Z85 "
            "characters; leave empty for a server without CURVE"
        ),
        default="",
    )
    client_secret: StringProperty(
        name="Client Key",
        description=(
            "CURVE only: this client's .key_secret file, whose public key the "
            "server allows"
        ),
        default="",
        subtype="FILE_PATH",
    )
    source: StringProperty(
        name="Source",
        description="Motion source: 'prior', or 'clip:<name>' to continue a clip",
        default="prior",
        search=_suggest_sources,
        search_options={"SUGGESTION", "SORT"},
        update=_stream_changed,
    )
    seed: IntProperty(
        name="Seed",
        description="The same seed gives the same motion, at every frame rate",
        default=0,
        min=0,
        update=_stream_changed,
    )
    speed: FloatProperty(
        name="Speed",
        description="Stream seconds per scene second",
        default=1.0,
        min=0.01,
        soft_max=4.0,
        update=_playback_changed,
    )
    armature: PointerProperty(
        name="Armature",
        description="The armature the stream drives",
        type=bpy.types.Object,
        poll=_is_armature,
        update=_playback_changed,
    )
    live: BoolProperty(
        name="Live",
        description=(
            "Pose the armature from the server at every frame change; turning it "
            "on takes a recorded take off the armature (the take is kept)"
        ),
        default=True,
        update=_live_changed,
    )
    record_scene_range: BoolProperty(
        name="Scene Range",
        description="Record the scene's frame range instead of a duration",
        default=False,
    )
    record_seconds: FloatProperty(
        name="Seconds",
        description="Seconds to record from the current frame",
        default=10.0,
        min=0.0,
        soft_max=120.0,
        unit="TIME_ABSOLUTE",
    )


CLASSES = (MOTIONODE_PG_joint, MOTIONODE_PG_armature, MOTIONODE_PG_scene)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.motionode_live = PointerProperty(type=MOTIONODE_PG_scene)
    bpy.types.Object.motionode_live = PointerProperty(type=MOTIONODE_PG_armature)


def unregister() -> None:
    del bpy.types.Object.motionode_live
    del bpy.types.Scene.motionode_live
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
