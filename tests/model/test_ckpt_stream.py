""".ckpt framing read/written without load_checkpoint, and the streamed transform and strip.

Every check compares against MindSpore itself: its save_checkpoint files are scanned, our
files are read back with its load_checkpoint, and the streamed transform must equal
`transform_checkpoint_by_rank` parameter for parameter (names, types, bytes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from orchestrate_bloom.ckpt import stream as ckpt_stream  # noqa: E402
from orchestrate_bloom.ckpt import tools as ckpt_tools  # noqa: E402
from orchestrate_bloom.ckpt import transform as ckpt_transform  # noqa: E402


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "w32": rng.standard_normal((70, 50)).astype(np.float32),  # 14,000 bytes
        "w16": rng.standard_normal((3, 4, 2)).astype(np.float16),
        "i32": rng.integers(-9, 9, (6,)).astype(np.int32),
        "i64": rng.integers(-9, 9, (2, 2)).astype(np.int64),
        "flag": np.array([True, False, True]),
        "step": np.array(7, dtype=np.int32),  # 0-d
    }


def test_scan_reads_what_save_checkpoint_wrote(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import mindspore.train.serialization as ser

    arrays = _arrays()
    monkeypatch.setattr(ser, "SLICE_SIZE", 1)  # KiB: w32 is saved as 14 Values
    for crc in (False, True):
        path = tmp_path / f"ms{crc}.ckpt"
        ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()],
                           str(path), crc_check=crc)
        entries = ckpt_stream.scan(path)
        assert list(entries) == list(arrays)
        assert len(entries["w32"].chunks) > 1  # several Values for one parameter
        with open(path, "rb") as fh:
            for name, a in arrays.items():
                e = entries[name]
                assert e.dims == a.shape
                got = np.empty(e.dims, dtype=ckpt_stream.raw_dtype(e.dtype))
                ckpt_stream.read_into(fh, e, got.data.cast("B"))  # as transform/check read
                assert got.tobytes() == a.tobytes(), name


def test_writer_output_loads_in_mindspore(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _arrays()
    types = {"w32": "Float32", "w16": "Float16", "i32": "Int32", "i64": "Int64",
             "flag": "Bool", "step": "Int32"}
    for slice_bytes in (ckpt_stream.SLICE_BYTES, 4000):  # one Value each; w32 in 4
        monkeypatch.setattr(ckpt_stream, "SLICE_BYTES", slice_bytes)
        path = tmp_path / f"ours{slice_bytes}.ckpt"
        with ckpt_stream.CkptWriter(path) as w:
            for name, a in arrays.items():
                w.write(name, a.shape, types[name], a)
        got = ms.load_checkpoint(str(path))
        assert list(got) == list(arrays)
        for name, a in arrays.items():
            assert got[name].asnumpy().dtype == a.dtype, name
            np.testing.assert_array_equal(got[name].asnumpy(), a, err_msg=name)
        assert len(ckpt_stream.scan(path)["w32"].chunks) == (1 if slice_bytes > 14000 else 4)


def test_scan_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x12\x05hello")  # field 2 at the top level: not a checkpoint
    with pytest.raises(ckpt_stream.UnsupportedCkpt, match="not a checkpoint record"):
        ckpt_stream.scan(bad)
    ok = tmp_path / "ok.ckpt"
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.ones((4, 4), np.float32))}], str(ok))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ok.read_bytes()[:-9])  # truncated inside the tensor bytes
    with pytest.raises(ckpt_stream.UnsupportedCkpt, match="runs past the end"):
        ckpt_stream.scan(cut)


def test_strip_copies_records_without_optimizer_state(tmp_path: Path) -> None:
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
              "adam_m.w": np.ones((3, 4), np.float32), "global_step": np.array([5], np.int32)}
    src = tmp_path / "src.ckpt"
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()], str(src))
    res = ckpt_tools.strip(src, tmp_path / "out.ckpt")
    assert (res["kept"], res["dropped"]) == (1, 2)
    got = ms.load_checkpoint(str(tmp_path / "out.ckpt"))
    assert list(got) == ["w"]
    np.testing.assert_array_equal(got["w"].asnumpy(), arrays["w"])


def _strategy(path: Path, layouts: dict[str, tuple[int, list[int], list[int]]]) -> None:
    """A merged-style strategy file: name -> (stage, device matrix, tensor map)."""
    from mindspore.train import node_strategy_pb2 as pb

    smap = pb.ParallelStrategyMap()
    smap.current_stage = 0
    item = smap.parallel_strategy_item.add()
    item.node_name = "test"
    item.parallel_strategys.stage = 0
    for name, (stage, dev, tmap) in layouts.items():
        lay = smap.parallel_layout_item.add()
        lay.param_name = f"{stage}-{name}"
        pl = lay.parallel_layouts
        pl.dev_matrix.add().dim.extend(dev)
        pl.tensor_map.add().dim.extend(tmap)
        pl.param_split_shape.add()
        pl.indices_offset.add()
        pl.field, pl.opt_weight_shard_step, pl.opt_weight_shard_size = 0, 0, 0
    path.write_bytes(smap.SerializeToString())


def test_streamed_transform_equals_mindspore(tmp_path: Path) -> None:
    """DP2 x MP2 x PP2 with column (axis 0), row (axis 1), 3-D and replicated parameters."""
    rng = np.random.default_rng(2)
    full = {
        "col.weight": rng.standard_normal((8, 6)).astype(np.float32),  # stage 0, axis 0 by MP
        "row.weight": rng.standard_normal((6, 8)).astype(np.float32),  # stage 0, axis 1 by MP
        "norm.weight": rng.standard_normal((6,)).astype(np.float16),  # stage 0, replicated
        "cube": rng.standard_normal((2, 4, 6)).astype(np.float32),  # stage 1, axis 2 by MP
        "dp.weight": rng.standard_normal((4, 3)).astype(np.float32),  # stage 1, axis 0 by DP
    }
    dev = [2, 2]  # [dp, mp]; tensor map k names device axis len(dev) - 1 - k
    layouts = {"col.weight": (0, dev, [0, -1]), "row.weight": (0, dev, [-1, 0]),
               "norm.weight": (0, dev, [-1]), "cube": (1, dev, [-1, -1, 0]),
               "dp.weight": (1, dev, [1, -1])}
    strategy = tmp_path / "strategy.ckpt"
    _strategy(strategy, layouts)
    src = {}
    for rank in range(8):
        stage, local = divmod(rank, 4)
        coord = np.unravel_index(local, dev)
        items = []
        for name, (st, d, tmap) in layouts.items():
            if st != stage:
                continue
            part = full[name]
            for axis, k in enumerate(tmap):
                if k >= 0:
                    n = d[len(d) - 1 - k]
                    part = np.split(part, n, axis=axis)[coord[len(d) - 1 - k]]
            items.append({"name": name, "data": ms.Tensor(np.ascontiguousarray(part))})
        items.append({"name": "global_step", "data": ms.Tensor(np.array([3], np.int32))})
        src[rank] = tmp_path / f"rank_{rank}.ckpt"
        ms.save_checkpoint(items, str(src[rank]))

    res = ckpt_tools.transform(src, strategy, tmp_path / "ours.ckpt")
    assert res["method"] == "streamed"
    ref = tmp_path / "ref.ckpt"
    ms.transform_checkpoint_by_rank(0, {r: str(src[r]) for r in res["ranks"]}, str(ref),
                                    str(strategy), None)
    got, want = ms.load_checkpoint(str(tmp_path / "ours.ckpt")), ms.load_checkpoint(str(ref))
    assert sorted(got) == sorted(want) == sorted([*full, "global_step"])
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name].asnumpy(), want[name].asnumpy(), err_msg=name)
    for name, a in full.items():
        np.testing.assert_array_equal(got[name].asnumpy(), a, err_msg=name)


def test_unsupported_layout_falls_back_to_mindspore(tmp_path: Path) -> None:
    full = np.arange(16, dtype=np.float32).reshape(4, 4)
    strategy = tmp_path / "s.ckpt"
    _strategy(strategy, {"w": (0, [2], [0])})
    from mindspore.train import node_strategy_pb2 as pb

    smap = pb.ParallelStrategyMap()
    smap.ParseFromString(strategy.read_bytes())
    smap.parallel_layout_item[0].parallel_layouts.opt_weight_shard_size = 2
    strategy.write_bytes(smap.SerializeToString())
    src = {}
    for r in (0, 1):
        src[r] = tmp_path / f"r{r}.ckpt"
        ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.split(full, 2)[r])}], str(src[r]))
    assert ckpt_transform._stream_transform(src, strategy, tmp_path / "x.ckpt") == "layout of w"
    assert not (tmp_path / "x.ckpt").exists()


def test_check_loads_parameter_by_parameter(tmp_path: Path) -> None:
    from mindspore import nn

    def factory(dtype: object) -> tuple[object, dict[str, tuple[int, ...]]]:
        net = nn.Dense(4, 3, dtype=dtype)
        return net, {p.name: tuple(p.shape) for p in net.get_parameters()}

    rng = np.random.default_rng(4)
    values = {"weight": rng.standard_normal((3, 4)).astype(np.float32),
              "bias": rng.standard_normal((3,)).astype(np.float32)}
    path = tmp_path / "d.ckpt"
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in values.items()], str(path))
    loaded: list[object] = []

    def keep(dtype: object) -> tuple[object, dict[str, tuple[int, ...]]]:
        net, shapes = factory(dtype)
        loaded.append(net)
        return net, shapes

    assert ckpt_tools.check(path, ms.float32, keep)["parameters"] == 2
    for p in loaded[0].get_parameters():  # type: ignore[attr-defined]
        np.testing.assert_array_equal(p.asnumpy(), values[p.name], err_msg=p.name)
    with pytest.raises(ckpt_tools.ToolError, match=r"wrong type for weight: checkpoint Float32"):
        ckpt_tools.check(path, ms.float16, factory)
