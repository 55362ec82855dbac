"""Armatures in Blender: build one from a skeleton, map joints onto an existing
one, pose it, and key poses into an action."""

from __future__ import annotations

import logging
import re

import bpy
import numpy as np
from mathutils import Matrix

from . import rig
from .wire import SkeletonDesc

logger = logging.getLogger(__name__)

__all__ = [
    "apply_pose",
    "build_armature",
    "driven_bones",
    "match_bones",
    "write_action",
]

TAKE_KEY = "motionode_take"  # custom property marking actions recorded here


def build_armature(
    context: bpy.types.Context,
    desc: SkeletonDesc,
    reference: np.ndarray | None = None,
    name: str = "motionode",
) -> bpy.types.Object:
    """A new armature object with one bone per joint, in the active collection.

    Bones are named after their joints (Blender cuts names to 63 bytes and adds
    ".001" to clashes; the mapping records the names it got), unconnected, with
    quaternion rotation. See ``rig.rest_layout`` for the rest pose and the
    ``reference`` pose (C,).
    """
    heads, tails = rig.rest_layout(desc, reference)
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    collection = context.collection or context.scene.collection
    collection.objects.link(obj)
    obj.show_in_front = True

    # Edit bones exist only in edit mode, which needs the object active.
    if context.object is not None and context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    bone_names: list[str] = []
    for j, joint in enumerate(desc.names):
        bone = data.edit_bones.new(joint)
        bone.head, bone.tail, bone.roll = heads[j], tails[j], 0.0
        bone.use_connect = False
        p = int(desc.parents[j])
        if p >= 0:
            bone.parent = data.edit_bones[bone_names[p]]
        bone_names.append(bone.name)
    bpy.ops.object.mode_set(mode="OBJECT")

    for bone in obj.pose.bones:
        bone.rotation_mode = "QUATERNION"
    settings = obj.motionode_live
    settings.mapping.clear()
    for joint, bone in zip(desc.names, bone_names):
        item = settings.mapping.add()
        item.joint, item.bone = joint, bone
    settings.skeleton = desc.fingerprint()
    settings.report = ""
    logger.info("built armature %r with %d bones", obj.name, len(bone_names))
    return obj


def _plain(name: str) -> str:
    """A name without namespace prefix, case, spaces or punctuation."""
    return re.sub(r"[^0-9a-z]", "", name.rsplit(":", 1)[-1].lower())


def match_bones(obj: bpy.types.Object, desc: SkeletonDesc) -> str:
    """Map each joint to the bone of the same name, else to the one bone whose name
    matches once namespace prefixes ("mixamorig:"), case, spaces and punctuation
    are dropped; returns (and stores) a report of what stayed unmatched."""
    bones = [b.name for b in obj.data.bones]
    plain: dict[str, list[str]] = {}
    for bone in bones:
        plain.setdefault(_plain(bone), []).append(bone)
    taken: set[str] = set()
    settings = obj.motionode_live
    settings.mapping.clear()
    for joint in desc.names:
        underscored = "_".join(joint.split())  # how the BVH importer names bones
        found = next((b for b in (joint, underscored) if b in bones), "")
        if not found and len(plain.get(_plain(joint), [])) == 1:
            found = plain[_plain(joint)][0]
        if found in taken:
            found = ""
        taken.add(found)
        item = settings.mapping.add()
        item.joint, item.bone = joint, found
    settings.skeleton = desc.fingerprint()
    settings.report = mapping_report(obj, desc)
    return settings.report


def mapping_report(obj: bpy.types.Object, desc: SkeletonDesc) -> str:
    """What the current mapping leaves out: joints without a bone, bones without a
    joint, and names that do not exist; empty if every joint drives a bone."""
    bones = {b.name for b in obj.data.bones}
    mapped = {i.joint: i.bone for i in obj.motionode_live.mapping}
    no_bone = [j for j in desc.names if not mapped.get(j)]
    missing = sorted(b for b in mapped.values() if b and b not in bones)
    unknown = sorted(set(mapped) - set(desc.names))
    no_joint = sorted(bones - set(mapped.values()))
    parts = []
    for label, names in (
        ("joints without a bone", no_bone),
        ("bones without a joint", no_joint),
        ("bones not in the armature", missing),
        ("joints not in the skeleton", unknown),
    ):
        if names:
            parts.append(f"{label} ({len(names)}): {', '.join(names)}")
    return "; ".join(parts)


def driven_bones(obj: bpy.types.Object, desc: SkeletonDesc) -> dict[str, int]:
    """Bone name -> index of the joint driving it, from the object's mapping."""
    joints = {name: j for j, name in enumerate(desc.names)}
    bones = obj.data.bones
    out: dict[str, int] = {}
    for item in obj.motionode_live.mapping:
        if item.bone in bones and item.joint in joints and item.bone not in out:
            out[item.bone] = joints[item.joint]
    return out


def _target(
    obj: bpy.types.Object, desc: SkeletonDesc
) -> tuple[list[str], rig.BoneTarget]:
    """The armature's bones (names in Blender's order) as the pose solver's target."""
    bones = list(obj.data.bones)
    names = [b.name for b in bones]
    index = {n: i for i, n in enumerate(names)}
    driven = driven_bones(obj, desc)
    joints = np.array([driven.get(n, -1) for n in names], dtype=np.int64)
    target = rig.BoneTarget(
        parents=np.array(
            [index[b.parent.name] if b.parent else -1 for b in bones], dtype=np.int64
        ),
        rest=np.array([b.matrix_local for b in bones], dtype=np.float64),
        joints=joints,
        moves=np.array([j >= 0 and desc.has_position(j) for j in joints]),
        basis=np.array(
            [obj.pose.bones[n].matrix_basis for n in names], dtype=np.float64
        ),
    )
    return names, target


def solve(
    obj: bpy.types.Object, desc: SkeletonDesc, rows: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Bone names, joint of each bone (-1: undriven) and basis matrices
    (T, B, 4, 4) posing ``obj`` like ``rows`` (T, C)."""
    names, target = _target(obj, desc)
    world_rot, world_pos = rig.blender_joints(desc, rows)
    return names, target.joints, rig.solve_basis(target, world_rot, world_pos)


def apply_pose(obj: bpy.types.Object, desc: SkeletonDesc, row: np.ndarray) -> None:
    """Pose the armature like ``row`` (C,) channel values."""
    if obj.mode == "EDIT":
        return  # edit mode shows the rest pose; posing now would be lost
    names, joints, basis = solve(obj, desc, np.asarray(row)[None])
    for b, name in enumerate(names):
        if joints[b] >= 0:
            obj.pose.bones[name].matrix_basis = Matrix(basis[0, b].tolist())


def _rotation_keys(mode: str, mats: list[Matrix]) -> tuple[str, np.ndarray]:
    """Data path and (T, K) values of a bone's rotation in its rotation mode,
    continuous from frame to frame (no quaternion sign or Euler 360 flips)."""
    out = []
    if mode == "QUATERNION" or mode == "AXIS_ANGLE":
        prev = None
        for mat in mats:
            quat = mat.to_quaternion()
            if prev is not None:
                quat.make_compatible(prev)
            prev = quat
            if mode == "AXIS_ANGLE":
                axis, angle = quat.to_axis_angle()
                out.append([angle, *axis])
            else:
                out.append(list(quat))
        path = "rotation_quaternion" if mode == "QUATERNION" else "rotation_axis_angle"
        return path, np.array(out)
    prev = None
    for mat in mats:
        euler = mat.to_euler(mode) if prev is None else mat.to_euler(mode, prev)
        prev = euler
        out.append(list(euler))
    return "rotation_euler", np.array(out)


def _fcurve(action, obj, path: str, index: int, group: str):
    """An F-curve of ``action`` (assigned to ``obj``) for ``path[index]``."""
    if hasattr(action, "fcurve_ensure_for_datablock"):  # slotted actions, 4.4+
        curve = action.fcurve_ensure_for_datablock(obj, path, index=index)
        from bpy_extras import anim_utils

        bag = anim_utils.action_get_channelbag_for_slot(
            action, obj.animation_data.action_slot
        )
        if bag is not None:
            curve.group = bag.groups.get(group) or bag.groups.new(group)
        return curve
    return action.fcurves.new(path, index=index, action_group=group)


def write_action(
    obj: bpy.types.Object,
    desc: SkeletonDesc,
    frames: np.ndarray,
    rows: np.ndarray,
    name: str,
) -> bpy.types.Action:
    """Key poses ``rows`` (T, C) at ``frames`` (T,) into a new action on ``obj``.

    Every driven bone gets its rotation keyed in its own rotation mode, and its
    location where its joint has position channels; keys are linear, one per
    frame. The action gets a fake user, so it stays in the file whatever is
    assigned later.
    """
    bone_names, joints, basis = solve(obj, desc, rows)  # basis (T, B, 4, 4)
    action = bpy.data.actions.new(name)
    action.use_fake_user = True
    action[TAKE_KEY] = 1
    if obj.animation_data is None:
        obj.animation_data_create()
    obj.animation_data.action = action
    frames = np.asarray(frames, dtype=np.float64)

    for b, bone_name in enumerate(bone_names):
        j = int(joints[b])
        if j < 0:
            continue
        pose_bone = obj.pose.bones[bone_name]
        mats = [Matrix(m.tolist()) for m in basis[:, b]]
        channels = [_rotation_keys(pose_bone.rotation_mode, mats)]
        if desc.has_position(j):
            channels.append(("location", basis[:, b, :3, 3]))
        for attr, values in channels:
            path = pose_bone.path_from_id(attr)
            for k in range(values.shape[1]):
                curve = _fcurve(action, obj, path, k, bone_name)
                points = curve.keyframe_points
                points.add(len(frames))
                co = np.stack([frames, values[:, k]], axis=1)  # (T, 2)
                points.foreach_set("co", co.ravel().tolist())
                for point in points:
                    point.interpolation = "LINEAR"
                curve.update()
    logger.info(
        "recorded %d frames of %d bones into action %r",
        len(frames),
        int((joints >= 0).sum()),
        action.name,
    )
    return action
