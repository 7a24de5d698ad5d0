import numpy as np
import pytest
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st

from minirepro.papers.meshtron import (
    MeshTokenizer,
    canonicalize,
    dequantize,
    load_mesh,
    make_primitive,
    quantize,
    random_transform,
    save_mesh,
    sequence_errors,
)


@st.composite
def integer_meshes(draw, n_levels=32):
    """Random integer meshes: vertices with repeats, faces with degenerate/duplicate rows."""
    n_v = draw(st.integers(3, 30))
    verts = draw(
        st.lists(st.tuples(*[st.integers(0, n_levels - 1)] * 3), min_size=n_v, max_size=n_v)
    )
    n_f = draw(st.integers(1, 40))
    faces = draw(st.lists(st.tuples(*[st.integers(0, n_v - 1)] * 3), min_size=n_f, max_size=n_f))
    return np.array(verts), np.array(faces)


def _face_set(v, f):
    return {tuple(sorted(map(tuple, v[face]))) for face in f}


@settings(max_examples=60, deadline=None)
@given(integer_meshes())
def test_round_trip_and_order_invariants(mesh):
    tok = MeshTokenizer(32)
    v, f = mesh
    cv, cf = canonicalize(v, f)
    ids = tok.encode_quantized(v, f)
    assert ids[0] == tok.bos and ids[-1] == tok.eos and (len(ids) - 2) % 9 == 0
    # exact round trip on the canonical mesh, and decoding gives the same faces
    dv, df = tok.decode_quantized(ids)
    np.testing.assert_array_equal(tok.encode_quantized(dv, df), ids)
    assert _face_set(dv, df) == _face_set(cv, cf)
    if len(cf):
        assert sequence_errors(ids, tok) == []
        # vertices sorted by (z, y, x), face indices ascending, faces lexicographic
        zyx = cv[:, ::-1]
        assert all(tuple(a) < tuple(b) for a, b in zip(zyx[:-1], zyx[1:]))
        assert (cf[:, 0] < cf[:, 1]).all() and (cf[:, 1] < cf[:, 2]).all()
        assert all(tuple(a) < tuple(b) for a, b in zip(cf[:-1], cf[1:]))
    # every surviving face is a non-degenerate face of the input
    src = _face_set(v, f)
    assert _face_set(cv, cf) <= src


def test_degenerate_and_duplicate_faces_dropped():
    v = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 0], [8, 0, 0], [0, 0, 4]])
    faces = np.array([
        [0, 1, 2],  # kept
        [2, 1, 0],  # duplicate (other winding)
        [3, 1, 2],  # duplicate through the merged vertex 3 == 0
        [0, 3, 1],  # repeated vertex after merging
        [0, 1, 4],  # collinear: zero area
        [0, 1, 5],  # kept
    ])  # fmt: skip
    cv, cf = canonicalize(v, faces)
    assert len(cf) == 2 and len(cv) == 4


def test_real_primitives_round_trip_through_files(tmp_path):
    tok = MeshTokenizer(1024)
    rng = np.random.default_rng(0)
    for kind in ("box", "torus", "cone"):
        mesh = random_transform(make_primitive(kind, rng), rng)
        ids = tok.encode(mesh)
        assert (len(ids) - 2) // 9 == len(mesh.faces)  # nothing merged at 1024 levels
        decoded = tok.decode(ids)
        for suffix in (".obj", ".glb", ".ply"):
            path = save_mesh(decoded, tmp_path / f"{kind}{suffix}")
            again = load_mesh(path)
            q = quantize(again.vertices, tok.n_levels)  # already in [-0.5, 0.5]
            np.testing.assert_array_equal(tok.encode_quantized(q, again.faces), ids)


def test_quantisation_is_exact_on_bin_centres():
    q = np.arange(1024)[:, None].repeat(3, 1)
    np.testing.assert_array_equal(quantize(dequantize(q, 1024), 1024), q)


def test_bad_input_is_rejected_clearly(tmp_path):
    tok = MeshTokenizer(64)
    with pytest.raises(ValueError, match="empty"):
        tok.encode((np.zeros((0, 3)), np.zeros((0, 3), int)))
    # three triangles on one edge: non-manifold
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, -1, 0.5]])
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 1, 4]])
    with pytest.raises(ValueError, match="non-manifold"):
        tok.encode((v, f))
    assert len(tok.encode((v, f), check_manifold=False)) == 2 + 27
    with pytest.raises(ValueError, match="no extent"):
        tok.encode((np.ones((3, 3)), np.array([[0, 1, 2]])))
    with pytest.raises(ValueError, match="faces must be"):
        tok.encode((v, np.array([[0, 1]])))
    with pytest.raises(ValueError, match="unsupported"):
        load_mesh(tmp_path / "mesh.stl")
    with pytest.raises(FileNotFoundError):
        load_mesh(tmp_path / "missing.obj")
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"this is not a glb file")
    with pytest.raises(ValueError, match="bad.glb"):
        load_mesh(bad)
    with pytest.raises(ValueError, match="n_levels"):
        MeshTokenizer(1)


def test_sequence_errors_name_the_problem():
    tok = MeshTokenizer(16)
    ids = tok.encode(trimesh.creation.box())
    assert sequence_errors(ids, tok) == []
    assert "EOS inside a face" in sequence_errors(np.r_[ids[:-5], tok.eos], tok)
    swapped = ids.copy()
    swapped[1:10], swapped[10:19] = ids[10:19], ids[1:10]
    assert "faces not strictly ascending" in sequence_errors(swapped, tok)
    rev = ids.copy()
    rev[1:4], rev[4:7] = ids[4:7], ids[1:4]
    assert "vertices of a face not strictly ascending" in sequence_errors(rev, tok)
    assert sequence_errors(ids[:-1], tok) == ["no EOS"]
