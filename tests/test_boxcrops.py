"""Box crops: the upright square around a detection box, independent of the landmarks."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from labeler.detect import rotate_image, unrotate_points
from labeler.faces.align import BORDER_VALUE, align_face, box_crop, box_landmarks

BOX = (150.0, 40.0, 330.0, 260.0)  # the astronaut's face in skimage's portrait


def _turned(rgb: np.ndarray, rotation: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """The photo as a phone stores it when turned (``rotation`` brings it upright), and the
    face's box in that stored photo's pixels."""
    stored = rotate_image(rgb, (360 - rotation) % 360)
    h, w = stored.shape[:2]
    c = unrotate_points(np.array([BOX[:2], BOX[2:]]), rotation, w, h)
    return stored, (*c.min(0), *c.max(0))


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_box_crop_of_a_turned_photo_is_upright(rotation):
    rgb = skimage.data.astronaut()
    upright = box_crop(rgb, BOX, size=128).astype(int)
    stored, box = _turned(rgb, rotation)
    diffs = {
        r: float(np.abs(upright - box_crop(stored, box, rotation=r, size=128)).mean())
        for r in (0, 90, 180, 270)
    }
    assert diffs[rotation] < 8, diffs  # the same picture up to resampling
    assert all(d > 40 for r, d in diffs.items() if r != rotation), diffs


def test_box_crop_ignores_the_landmarks_and_keeps_the_face_scale():
    rgb = skimage.data.astronaut()
    lm = box_landmarks(BOX)
    # the template's eyes sit inside the box, the box + margin fills the crop
    side = max(BOX[2] - BOX[0], BOX[3] - BOX[1]) * 1.4
    assert np.allclose(np.ptp(lm[:, 0]), 0.29 * side, rtol=0.01)
    crop = box_crop(rgb, BOX)
    assert crop.shape == (256, 256, 3)
    # a different (wrong) set of landmarks changes the aligned crop but not the box crop
    wrong = lm + np.float32([[40, 0], [40, 0], [0, 30], [0, 30]])
    assert np.abs(align_face(rgb, wrong).astype(int) - crop).mean() > 10
    assert np.array_equal(box_crop(rgb, BOX), crop)


def test_box_crop_fills_outside_the_photo_with_grey_not_streaks():
    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[:, :, 0] = np.arange(200)[None, :]  # a ramp: replicating it would smear its edge
    crop = box_crop(rgb, (0.0, 0.0, 100.0, 100.0), size=140)  # face at the corner
    assert np.all(crop[2, 2] == BORDER_VALUE)
    replicate = align_face(rgb, box_landmarks((0.0, 0.0, 100.0, 100.0)), size=140)
    assert not np.all(replicate[2, 2] == BORDER_VALUE)


def test_rotation_must_be_a_right_angle():
    with pytest.raises(ValueError, match="rotation"):
        box_landmarks(BOX, rotation=45)


def test_workspace_box_crops_are_written_once_and_embedded(tmp_path):
    """labeler detect on real photos, then the box region: crops are written beside the
    aligned ones (resumable), and embedding the region uses them."""
    from PIL import Image

    from labeler.detect.pipeline import detect_workspace
    from labeler.embeddings.embed import crop_paths, load_crops
    from labeler.faces.boxcrops import box_crops_workspace
    from labeler.ingest import ingest_folder
    from labeler.workspace import Workspace

    photos = tmp_path / "photos"
    photos.mkdir()
    rgb = skimage.data.astronaut()
    Image.fromarray(rgb).save(photos / "a.jpg", quality=95)
    Image.fromarray(np.ascontiguousarray(rgb[:, ::-1])).save(photos / "b.jpg", quality=95)
    Image.fromarray(rotate_image(rgb, 90)).save(photos / "c.jpg", quality=95)  # sideways
    ws = Workspace.open(tmp_path / "ws", create=True)
    ingest_folder(ws, photos)
    detect_workspace(ws, detector="mediapipe", progress=False)
    faces = ws.faces()
    assert len(faces) >= 3
    # detect wrote the box crops from its own decode; the step that writes them from the
    # files (old workspaces, the GPU pass) makes the same pixels
    written = {f: ws.box_crop_path(f).read_bytes() for f in faces["face_id"]}
    assert box_crops_workspace(ws) == 0  # nothing left to do
    for f in faces["face_id"]:
        ws.box_crop_path(f).unlink()
    assert box_crops_workspace(ws) == len(faces)
    assert {f: ws.box_crop_path(f).read_bytes() for f in faces["face_id"]} == written
    assert box_crops_workspace(ws) == 0  # resumable
    paths = crop_paths(ws, faces, crop="box")
    crops = load_crops(list(paths), region="box", size=128)
    assert crops.shape == (len(faces), 128, 128, 3)
    # the sideways photo's box crop shows the same upright face as the upright photo's
    by_name = dict(
        zip(ws.face_image_paths(faces).map(lambda p: p.rsplit("/", 1)[-1]), crops, strict=True)
    )
    a, c = by_name["a.jpg"].astype(int), by_name["c.jpg"]
    diffs = [float(np.abs(a - np.rot90(c, k)).mean()) for k in range(4)]
    assert diffs[0] < 0.75 * min(diffs[1:]), diffs
