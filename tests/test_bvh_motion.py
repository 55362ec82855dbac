"""Motion rows: the compiled parser and the Python reader agree bit for bit, with
float(), and on every error's line and message."""

import logging
import random
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from motionode import bvh
from motionode.bvh import BVHError, parse_bvh, read_bvh

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).parents[2] / "shared"
CLIPS_DIR = SHARED / "data" / "bvh"
CASES_DIR = SHARED / "cases" / "bvh"
MISSING = f"shared clips not found at {CLIPS_DIR} (clone with shared/ beside the repo)"
NOT_BUILT = (
    "compiled parser not built: motionode._bvhmotion is missing (reinstall with a "
    "C compiler)"
)
CLIPS = sorted(CLIPS_DIR.rglob("*.bvh")) if CLIPS_DIR.is_dir() else []

# Spellings float() accepts that are easy to get wrong: signs, bare points, signed
# zeros, the ends of the double range, subnormals, halfway cases and digit strings
# longer than any mantissa.
SPELLINGS = [
    "+1",
    ".5",
    "5.",
    "-0",
    "-0.0",
    "+0",
    "-.0e5",
    "0e999",
    "-0e-99999999999",
    "00012",
    "0001.5e+0001",
    "+.5e-3",
    "1.E1",
    "1E-0",
    "1e22",
    "1e23",
    "12e30",
    "9007199254740991",
    "9007199254740992",
    "9007199254740993",  # halfway between two doubles: rounds to even
    "900719925474099.3e1",
    "123456789012345678",
    "1234567890123456789",
    "12345678901234567890",
    "0.1",
    "0.30000000000000004",
    "179.99999999999997",
    "1e308",
    "1.7976931348623157e308",
    "1.7976931348623158e308",
    "8.98846567431158e307",
    "2.2250738585072011e-308",
    "2.2250738585072012e-308",
    "4.4501477170144023e-308",
    "1e-320",
    "5e-324",
    "4.9e-324",
    "2.4703282292062327e-324",  # just under half the smallest subnormal: 0
    "2.4703282292062328e-324",  # just over: the smallest subnormal
    "1e-400",
    "1.00000000000000011102230246251565404236316680908203125",
    "1.00000000000000011102230246251565404236316680908203124",
    "1" + "0" * 400,
    "0." + "0" * 400 + "1e400",
    "1" * 60,
    "." + "9" * 40,
    "-" + "7" * 25 + "." + "3" * 25 + "e-40",
]


def spellings(seed: int, count: int) -> list[str]:
    """``count`` random float spellings plus every one in SPELLINGS."""
    rng = random.Random(seed)
    out = list(SPELLINGS)
    while len(out) < count:
        kind = rng.random()
        if kind < 0.3:  # what exporters write: a few decimals
            out.append(f"{rng.uniform(-360, 360):.{rng.randint(0, 9)}f}")
        elif kind < 0.6:  # shortest round-trip text of any double, subnormals too
            value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
            if np.isfinite(value):
                out.append(repr(value))
        else:  # random digits, point and exponent
            whole = "".join(rng.choices("0123456789", k=rng.randint(0, 22)))
            frac = "".join(rng.choices("0123456789", k=rng.randint(0, 22)))
            if not whole and not frac:
                whole = "0"
            token = rng.choice(["", "+", "-"]) + whole
            if frac or rng.random() < 0.2:
                token += "." + frac
            if rng.random() < 0.6:
                token += rng.choice("eE") + rng.choice(["", "+", "-"])
                token += str(rng.randint(0, 340))
            out.append(token)
    return out


def bits(values) -> list[int]:
    return [struct.unpack("<Q", struct.pack("<d", v))[0] for v in values]


def chain_text(joints: int, motion: str, frames: int = 0, root: str = "J0") -> str:
    """A chain of ``joints`` joints with three rotation channels each, then
    ``motion`` verbatim after the Frame Time line."""
    head = ["HIERARCHY"]
    for j in range(joints):
        name = root if j == 0 else f"J{j}"
        head += [
            f"{'ROOT' if j == 0 else 'JOINT'} {name}",
            "{",
            f"OFFSET 0 {j} 0",
            "CHANNELS 3 Zrotation Xrotation Yrotation",
        ]
    head += ["End Site", "{", "OFFSET 0 1 0", "}"] + ["}"] * joints
    head += ["MOTION", f"Frames: {frames}", "Frame Time: 0.04"]
    return "\n".join(head) + "\n" + motion


def header_lines(text: str) -> int:
    """Lines up to and including Frame Time:, which ends with a LF in chain_text."""
    return text[: text.index("Frame Time:")].count("\n") + 1


@pytest.fixture(params=["compiled", "python"])
def reader(request, monkeypatch) -> str:
    """Run the test once with the compiled parser and once without it."""
    if request.param == "compiled":
        if bvh._bvhmotion is None:
            pytest.skip(NOT_BUILT)
    else:
        monkeypatch.setattr(bvh, "_bvhmotion", None)
        monkeypatch.setattr(bvh, "_bvhmotion_missing", None)
    return request.param


def parse_quietly(text: str, path: str = "inline"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Frames: is left at 0
        return parse_bvh(text, path)


# ------------------------------------------------------------------ real clips


def test_every_clip_reads_the_same_both_ways(monkeypatch):
    if not CLIPS:
        pytest.skip(MISSING)
    if bvh._bvhmotion is None:
        pytest.skip(NOT_BUILT)
    compiled = bvh._bvhmotion
    python_rows = bvh._python_rows

    def no_fallback(*args):
        raise AssertionError("a real clip fell back to the Python reader")

    for path in CLIPS:
        # Real clips are plain numbers: the compiled parser must take all of them.
        monkeypatch.setattr(bvh, "_bvhmotion", compiled)
        monkeypatch.setattr(bvh, "_python_rows", no_fallback)
        fast = read_bvh(path).motion
        monkeypatch.setattr(bvh, "_bvhmotion", None)
        monkeypatch.setattr(bvh, "_python_rows", python_rows)
        slow = read_bvh(path).motion
        assert fast.shape == slow.shape, path
        assert fast.dtype == slow.dtype == np.float64, path
        assert fast.tobytes() == slow.tobytes(), f"values differ: {path}"
        assert fast.flags.writeable and fast.flags.c_contiguous, path


# ---------------------------------------------------------------- float spellings


def test_compiled_parser_matches_float_on_every_spelling():
    if bvh._bvhmotion is None:
        pytest.skip(NOT_BUILT)
    tokens = spellings(seed=11, count=30000)
    want = bits(float(t) for t in tokens)
    seps = [" ", "\t", "  \t "]
    text = "".join(t + seps[k % 3] for k, t in enumerate(tokens))
    for source in (text, text.encode("ascii")):
        values, rows, line, count = bvh._bvhmotion.parse_rows(source, 0, len(tokens))
        assert (rows, line, count) == (1, -1, 0)
        got = bits(np.frombuffer(values, dtype=np.float64).tolist())
        wrong = [(t, g, w) for t, g, w in zip(tokens, got, want) if g != w]
        assert not wrong, f"{len(wrong)} differ from float(), e.g. {wrong[:3]}"


def test_finite_spellings_read_as_float_does(reader):
    tokens = [t for t in spellings(seed=5, count=6000) if np.isfinite(float(t))]
    tokens += ["0"] * (-len(tokens) % 30)
    rows = [" ".join(tokens[k : k + 30]) for k in range(0, len(tokens), 30)]
    clip = parse_quietly(chain_text(10, "\n".join(rows)))
    assert clip.motion.shape == (len(rows), 30)
    assert bits(clip.motion.ravel().tolist()) == bits(float(t) for t in tokens)


# ----------------------------------------------------------------- bad and odd rows


@pytest.mark.parametrize(
    "motion, line, message",
    [
        ("1 2 3\n4 5\n", 2, "expected 3 values per motion row, got 2 (row cut short)"),
        ("1 2 3\n4 5 6 7\n", 2, "expected 3 values per motion row, got 4 (too many"),
        ("\r\n1 2 3\r\n\r\n \t \r\n4 5 6 7\r\n", 5, "got 4 (too many values)"),
        ("1 2 3\r4 5\r6 7 8\r", 2, "got 2 (row cut short)"),
        ("1 2 3\r\r\n\n4 5", 4, "got 2 (row cut short)"),
        ("1 2 3\n4 5 6\n7", 3, "got 1 (row cut short)"),
        ("1 2 3\n4 x 6\n", 2, "expected a number, got 'x'"),
        ("1 2 3\n4 x\n", 2, "got 2 (row cut short)"),  # the count is checked first
        ("1 2 3\n4 x 6 7 8\n", 2, "got 5 (too many values)"),
        ("1 2 3\n4 1,5 6\n1 2\n", 2, "expected a number, got '1,5'"),
        ("1 2 3\n4 5 6\n.\t2 3\n", 3, "expected a number, got '.'"),
        ("1 2 3\n1e 2 3\n", 2, "expected a number, got '1e'"),
        ("1 2 3\n1 - 3\n", 2, "expected a number, got '-'"),
        ("1 2 3\n1 2 0x10\n", 2, "expected a number, got '0x10'"),
        ("1 2 3\n1 2 3.5.1\n", 2, "expected a number, got '3.5.1'"),
        ("1 2 3\n1 2 1e5e5\n", 2, "expected a number, got '1e5e5'"),
        ("1 2 3\n4 5 nan\n", 2, "got nan in frame 1 channel 2 (J0 Yrotation)"),
        ("\n\n1 2 3\n4 5 1e999\n", 4, "got inf in frame 1 channel 2"),
        ("1 2 3\n" * 3 + "4 -1e400 6\n", 4, "got -inf in frame 3 channel 1"),
        ("1 2 3\n4 5 " + "9" * 400 + "\n", 2, "got inf in frame 1 channel 2"),
        ("1 2 3\n4 5 -Infinity\n", 2, "got -inf in frame 1 channel 2"),
        ("1 2 3\n4 5 6\x00\n", 2, "expected text, got binary data (NUL byte)"),
    ],
)
@pytest.mark.parametrize("root", ["J0", "Hüfte", "腰"])
def test_bad_row_names_its_line(reader, root, motion, line, message):
    text = chain_text(1, motion, root=root)
    with pytest.raises(BVHError) as info:
        parse_quietly(text, "rows.bvh")
    want = header_lines(text) + line
    assert info.value.line == want, str(info.value)
    assert str(info.value).startswith(f"rows.bvh:{want}: ")
    assert message.replace("J0", root) in str(info.value)


@pytest.mark.parametrize(
    "motion, rows",
    [
        ("", []),
        ("\n \t\n\r\n", []),
        ("1 2 3", [[1, 2, 3]]),
        ("\t1\t2\t3\t\r\n\r\n  4  5  6  ", [[1, 2, 3], [4, 5, 6]]),
        ("1 2 3\r4 5 6\r", [[1, 2, 3], [4, 5, 6]]),
        # Characters Python splits on, or counts as line ends, besides the usual;
        # a vertical tab ends a line, leaving a row of one value (None: an error).
        ("1\x0b2 3\n", None),
        ("1 2 3\x0c\x1c\x1d\x1e\x85\u2028\u20294 5 6\n", [[1, 2, 3], [4, 5, 6]]),
        ("1\xa02\u30003\x1f\n", [[1, 2, 3]]),
        # float() reads these; the Python reader keeps that.
        ("1_0 2 3\n", [[10, 2, 3]]),
        ("\u0661 \u0662.5 3\n", [[1, 2.5, 3]]),
    ],
)
def test_odd_rows_read_as_python_reads_them(reader, motion, rows):
    if rows is None:
        with pytest.raises(BVHError, match="got 1 \\(row cut short\\)"):
            parse_quietly(chain_text(1, motion))
        return
    clip = parse_quietly(chain_text(1, motion))
    assert clip.motion.shape == (len(rows), 3)
    np.testing.assert_array_equal(clip.motion, np.reshape(rows, (-1, 3)))


def test_frame_count_warning_and_zero_channels(reader):
    text = chain_text(2, "1 2 3 4 5 6\n\n7 8 9 10 11 12", frames=3)
    with pytest.warns(UserWarning, match=r"Frames: says 3, found 2 complete rows"):
        clip = parse_bvh(text, "inline")
    np.testing.assert_array_equal(clip.motion[:, 5], [6, 12])

    no_channels = chain_text(1, "\n\n", frames=4).replace("CHANNELS 3", "CHANNELS 0")
    no_channels = no_channels.replace(" Zrotation Xrotation Yrotation", "")
    assert parse_bvh(no_channels, "inline").motion.shape == (4, 0)
    with pytest.raises(BVHError, match=r"expected 0 values per motion row, got 1"):
        parse_bvh(no_channels + "5\n", "inline")


def test_shared_cases_and_test_files_read_the_same_both_ways(monkeypatch):
    files = sorted(DATA.glob("*.bvh")) + sorted(CASES_DIR.glob("*.bvh"))
    compiled = bvh._bvhmotion
    for path in files:
        outcomes = []
        for module in (compiled, None):
            monkeypatch.setattr(bvh, "_bvhmotion", module)
            monkeypatch.setattr(bvh, "_bvhmotion_missing", None)
            outcomes.append(outcome(path))
        assert outcomes[0] == outcomes[1], path


def outcome(path: Path) -> tuple:
    """What reading ``path`` gives, in a form that compares bit for bit."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            clip = read_bvh(path)
        except BVHError as err:
            return ("error", str(err), [str(w.message) for w in caught])
    sk = clip.skeleton
    return (
        sk.names,
        sk.channels,
        sk.offsets.tobytes(),
        sk.end_offsets.tobytes(),
        clip.frame_time,
        clip.motion.shape,
        clip.motion.tobytes(),
        [str(w.message) for w in caught],
    )


# ------------------------------------------------------------- the header's prefix


@pytest.mark.parametrize("chunk", [1, 9, 200])
def test_header_found_from_any_prefix_size(monkeypatch, chunk):
    # The header is parsed from a prefix of the text that grows until it is enough;
    # files, errors and warnings must not depend on where the prefix is cut.
    files = sorted(DATA.glob("*.bvh")) + sorted(CASES_DIR.glob("*.bvh"))
    files += CLIPS[:3]
    whole = {path: outcome(path) for path in files}
    monkeypatch.setattr(bvh, "_HEAD_CHUNK", chunk)
    for path in files:
        assert outcome(path) == whole[path], path


def test_long_header_with_crlf_cut_anywhere(monkeypatch):
    text = chain_text(200, "\n".join(["1 2 3 " * 200] * 3)).replace("\n", "\r\n")
    want = parse_quietly(text).motion
    assert want.shape == (3, 600)
    # First cuts around the Frame Time line and inside its CRLF.
    end = text.index("Frame Time:") + len("Frame Time: 0.04")
    for chunk in range(end - 20, end + 8):
        monkeypatch.setattr(bvh, "_HEAD_CHUNK", chunk)
        assert parse_quietly(text).motion.tobytes() == want.tobytes(), chunk


# ------------------------------------------------------------------- the fallback


def test_missing_parser_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(bvh, "_bvhmotion", None)
    monkeypatch.setattr(bvh, "_bvhmotion_missing", "No module named 'x'")
    with caplog.at_level(logging.DEBUG, logger="motionode.bvh"):
        for _ in range(3):
            clip = read_bvh(DATA / "two_joints.bvh")
    assert clip.motion.shape == (3, 9)
    records = [r for r in caplog.records if "compiled BVH parser" in r.message]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "No module named 'x'" in records[0].message


def test_compiled_parser_checks_its_arguments():
    if bvh._bvhmotion is None:
        pytest.skip(NOT_BUILT)
    parse_rows = bvh._bvhmotion.parse_rows
    with pytest.raises(ValueError, match="start"):
        parse_rows("1 2", 4, 2)
    with pytest.raises(ValueError, match="width"):
        parse_rows("1 2", 0, -1)
    with pytest.raises(TypeError):
        parse_rows(12, 0, 1)
    values, rows, _, _ = parse_rows("9 9\n1 2\n", 4, 2)
    assert (np.frombuffer(values).tolist(), rows) == ([1.0, 2.0], 1)
    assert parse_rows("1 2\n3", 0, 2)[1:] == (0, 1, 1)
    assert parse_rows("1 2\n3 \u00e9", 0, 2) == (None, 0, -1, 0)
