"""The sidebar panel (3D viewport, tab "motionode") and the bone mapping list."""

from __future__ import annotations

import logging

import bpy

from . import deps, ops
from .session import SESSION

logger = logging.getLogger(__name__)

STATE_ICONS = {
    "connected": "LINKED",
    "connecting": "TIME",
    "lost": "ERROR",
    "error": "CANCEL",
    "disconnected": "UNLINKED",
}


class _Sidebar:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "motionode"


def _wrapped(layout, text: str, icon: str = "NONE", width: int = 48) -> None:
    """``text`` as labels of at most ``width`` characters, the first with ``icon``."""
    words, line, lines = text.split(), "", []
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    col = layout.column(align=True)
    for i, chunk in enumerate(lines):
        col.label(text=chunk, icon=icon if i == 0 else "BLANK1")


class MOTIONODE_PT_live(_Sidebar, bpy.types.Panel):
    bl_label = "motionode live"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.motionode_live
        problem = deps.zmq_problem()
        if problem is not None:
            box = layout.box()
            _wrapped(box, problem, icon="ERROR")
            box.operator("motionode.install_pyzmq", icon="IMPORT")
            if ops.INSTALL_STATE["message"]:
                _wrapped(box, ops.INSTALL_STATE["message"])
            return

        col = layout.column()
        col.enabled = SESSION.link is None
        col.prop(settings, "endpoint")
        col.prop(settings, "server_key")
        col.prop(settings, "client_secret")
        layout.prop(settings, "source")
        row = layout.row(align=True)
        row.prop(settings, "seed")
        row.prop(settings, "speed")
        if SESSION.link is None:
            layout.operator("motionode.connect", icon="LINKED")
        else:
            layout.operator("motionode.disconnect", icon="UNLINKED")
        icon = STATE_ICONS.get(SESSION.state, "INFO")
        _wrapped(layout, f"{SESSION.state}: {SESSION.message}".rstrip(": "), icon)
        if SESSION.stream_endpoint and SESSION.link is not None:
            layout.label(text=f"Push streams: {SESSION.stream_endpoint}")


class MOTIONODE_PT_character(_Sidebar, bpy.types.Panel):
    bl_label = "Character"
    bl_parent_id = "MOTIONODE_PT_live"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.motionode_live
        layout.prop(settings, "armature")
        row = layout.row(align=True)
        row.operator("motionode.build_armature", icon="ARMATURE_DATA")
        row.operator("motionode.match_bones", icon="BONE_DATA")
        layout.prop(settings, "live")
        obj = settings.armature
        skeleton = SESSION.skeleton
        if obj is None:
            return
        mapping = obj.motionode_live
        if skeleton is not None and mapping.skeleton != skeleton.fingerprint():
            _wrapped(
                layout,
                "The mapping was made for another skeleton: build an armature or "
                "match bones again",
                icon="ERROR",
            )
        if mapping.report:
            _wrapped(layout, mapping.report, icon="INFO")
        anim = obj.animation_data
        if settings.live and anim is not None and anim.action is not None:
            _wrapped(
                layout,
                f"Action '{anim.action.name}' overrides live poses on its keyed bones",
                icon="ERROR",
            )


class MOTIONODE_UL_mapping(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, prop):
        row = layout.row(align=True)
        row.label(text=item.joint, icon="BONE_DATA")
        obj = data.id_data
        row.prop_search(item, "bone", obj.data, "bones", text="")


class MOTIONODE_PT_mapping(_Sidebar, bpy.types.Panel):
    bl_label = "Bone Mapping"
    bl_parent_id = "MOTIONODE_PT_character"
    bl_options = frozenset({"DEFAULT_CLOSED"})

    @classmethod
    def poll(cls, context):
        return context.scene.motionode_live.armature is not None

    def draw(self, context):
        obj = context.scene.motionode_live.armature
        settings = obj.motionode_live
        self.layout.template_list(
            "MOTIONODE_UL_mapping",
            "",
            settings,
            "mapping",
            settings,
            "mapping_index",
            rows=6,
        )


class MOTIONODE_PT_record(_Sidebar, bpy.types.Panel):
    bl_label = "Record"
    bl_parent_id = "MOTIONODE_PT_live"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.motionode_live
        layout.prop(settings, "record_scene_range")
        row = layout.row()
        row.enabled = not settings.record_scene_range
        row.prop(settings, "record_seconds")
        layout.operator("motionode.record", icon="REC")


CLASSES = (
    MOTIONODE_PT_live,
    MOTIONODE_PT_character,
    MOTIONODE_UL_mapping,
    MOTIONODE_PT_mapping,
    MOTIONODE_PT_record,
)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
