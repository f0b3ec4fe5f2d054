"""The workspace object and the small helpers every step shares: paths given as str or Path,
run ids, JSON conversion and atomic writes (one implementation each)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labeler._io import atomic_path, atomic_write_bytes
from labeler.workspace import (
    Workspace,
    WorkspaceError,
    jsonable,
    new_run_id,
    read_json,
    write_json,
    write_table,
)


def test_workspace_accepts_str_and_path(tmp_path):
    Workspace.open(tmp_path / "ws", create=True)
    as_str = Workspace(str(tmp_path / "ws"))
    as_path = Workspace(tmp_path / "ws")
    assert isinstance(as_str.root, Path)
    assert as_str == as_path and hash(as_str) == hash(as_path)
    # what failed before deep inside with "unsupported operand type(s) for /: 'str' and 'str'"
    assert as_str.faces_path == tmp_path / "ws" / "faces.parquet"
    assert as_str.crop_path("ab12_0") == tmp_path / "ws" / "crops" / "ab" / "ab12_0.jpg"
    assert as_str.meta()["roots"] == []
    assert as_str.faces().empty
    with pytest.raises(WorkspaceError, match="no faces yet"):
        as_str.require_faces()
    assert Workspace.open(str(tmp_path / "ws")).root == (tmp_path / "ws").resolve()


def test_workspace_refuses_what_is_not_a_path():
    with pytest.raises(TypeError, match="str or path, got int"):
        Workspace(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str or path, got NoneType"):
        Workspace(None)  # type: ignore[arg-type]


def test_cluster_steps_take_a_str_workspace(tmp_path):
    from labeler.cluster.store import current_run_id, list_runs

    Workspace.open(tmp_path / "ws", create=True)
    ws = Workspace(str(tmp_path / "ws"))
    assert current_run_id(ws) is None
    assert list_runs(ws).empty


def test_new_run_ids_sort_by_time_and_never_collide():
    ids: list[str] = []
    lock = threading.Lock()

    def make() -> None:
        for _ in range(5000):  # random 6-hex tails collided (~12 times in 20,000)
            run_id = new_run_id("mask_state-head")
            with lock:
                ids.append(run_id)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 20_000  # four threads at once: still distinct
    day, clock, hexpart, suffix = ids[0].split("-", 3)  # YYYYmmdd-HHMMSS-<hex>-<suffix>
    assert len(day) == 8 and len(clock) == 6 and (day + clock).isdigit()
    assert len(hexpart) == 6 and suffix == "mask_state-head"
    plain = new_run_id()
    assert len(plain.split("-")) == 3 and len(plain.split("-")[2]) == 6
    assert sorted([plain, "20000101-000000-ffffff"])[0].startswith("2000")


def test_cluster_and_train_share_the_run_id():
    import labeler.cluster.store as store
    import labeler.train.runs as runs

    assert store.new_run_id is new_run_id
    assert runs.new_run_id is new_run_id


@dataclass(frozen=True)
class _Cfg:
    name: str
    size: tuple[int, int]
    where: Path


def test_jsonable_round_trips_through_write_json(tmp_path):
    obj = {
        "cfg": _Cfg("a", (1, 2), Path("/x/y")),
        3: np.float32(0.5),
        "ints": [np.int64(4), (5, 6)],
    }
    plain = jsonable(obj)
    assert plain == {
        "cfg": {"name": "a", "size": [1, 2], "where": "/x/y"},
        "3": 0.5,
        "ints": [4, [5, 6]],
    }
    write_json(tmp_path / "o.json", obj)
    assert read_json(tmp_path / "o.json") == plain


def test_atomic_write_replaces_whole_files_and_cleans_up(tmp_path):
    target = tmp_path / "deep" / "file.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second", fsync=False)
    assert target.read_bytes() == b"second"
    # ordinary permissions (the umask applies), not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a fi")
        raise Boom
    assert target.read_bytes() == b"second"  # the old file survives a failed write
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]  # no temp left

    # a failed Parquet write (a column that does not fit the schema) leaves the table as it was
    import pyarrow as pa

    schema = pa.schema([("a", pa.int64())])
    table_path = tmp_path / "t.parquet"
    write_table(table_path, pd.DataFrame({"a": [1, 2]}), schema)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, ValueError)):
        write_table(table_path, pd.DataFrame({"a": ["x", "y"]}), schema)
    assert pd.read_parquet(table_path)["a"].tolist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "t.parquet"]


def test_atomic_writes_from_many_threads(tmp_path):
    from labeler.imageio import write_bytes

    target = tmp_path / "crop.jpg"
    payloads = [bytes([i]) * 10_000 for i in range(16)]
    threads = [threading.Thread(target=write_bytes, args=(target, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads  # one whole payload, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["crop.jpg"]


def test_one_home_for_the_shared_helpers():
    """Each helper of issue 14 item 6 exists once; the other modules use that one."""
    import labeler.embeddings.backbones as backbones
    import labeler.embeddings.embed as embed
    import labeler.embeddings.weights as weights
    import labeler.train.finetune as finetune
    import labeler.workspace as workspace

    assert not hasattr(finetune, "resolve_device")
    assert not hasattr(finetune, "offline_weights")
    assert not hasattr(embed, "_jsonable") and not hasattr(workspace, "_jsonable")
    assert workspace.atomic_write_bytes is atomic_write_bytes
    assert backbones.resolve_device("cpu") == "cpu"
    path = weights.find_offline_weights("efficientnet_lite0")
    assert path is None or path.suffix == ".pth"
    assert weights.find_offline_weights("timm:no_such_model") is None
