"""Sweep outputs: front CSV/JSON contents, PNG plots, and TensorBoard events read back with TensorBoard's own
readers (scalars, HParams runs, the front image, the projector served by the projector plugin)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.metrics import Metrics
from autosurgeon.space.search_space import SearchSpace
from experiments.reporting import TensorBoardRecorder, read_front, write_run_outputs

NAMES = ["latency", "memory", "energy"]


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    inputs = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
    return SearchSpace.build(model, resolve_profile("h100-80gb"), inputs=inputs)


def make_records(space: SearchSpace, n: int, *, algo: str = "nsga2", seed: int = 0) -> list[dict]:
    """Records as the sweep makes them: real plans (decode) and Metrics; the figures are synthetic."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = space.random_vector(rng)
        m = Metrics(latency_s=float(rng.uniform(1e-3, 3e-3)), peak_bytes={"gpu": int(rng.integers(1e5, 1e6)),
                    "cpu": int(rng.integers(0, 1e4))}, energy_j=float(rng.uniform(0.1, 0.3)),
                    labels={"latency_s": "estimated", "peak_bytes": "estimated", "energy_j": "estimated"})
        out.append({"eval": i, "algo": algo, "generation": i // 8, "x": [int(v) for v in x],
                    "plan": space.decode(x).to_dict(), "metrics": m.to_dict(), "objectives": list(m.objectives(NAMES)),
                    "feasible": True})
    return out


def pareto(records: list[dict]) -> list[int]:
    f = np.array([r["objectives"] for r in records])
    return [i for i in range(len(f)) if not any(np.all(f[j] <= f[i]) and np.any(f[j] < f[i]) for j in range(len(f)))]


@pytest.fixture(scope="module")
def run(tmp_path_factory, space):
    run_dir = tmp_path_factory.mktemp("runs") / "sweep"
    records = make_records(space, 40)
    front = pareto(records)
    baselines = {"random": make_records(space, 4, algo="random", seed=1),
                 "knapsack": make_records(space, 1, algo="knapsack", seed=2)}
    config = {"objectives": NAMES, "reference_point": [1.1, 1.1, 1.1], "model": "tiny", "device": "h100-80gb"}
    records[3]["algo"] = "baseline:unmodified"  # a baseline among the records, as a sweep has them
    with TensorBoardRecorder(run_dir / "tb") as rec:
        for gen in range(5):
            rec.on_generation(gen, best={"latency": 1e-3 / (gen + 1), "memory": 1e5}, n_evals=8 * (gen + 1))
            for n in range(8 * gen + 1, 8 * gen + 9):
                rec.on_evaluation(n, hypervolume=0.01 * n)
    # Called twice, as a sweep does when it resumes: the second call replaces the first's outputs.
    write_run_outputs(run_dir, config=config, records=records, front_idx=front[:2], baselines=baselines)
    paths = write_run_outputs(run_dir, config=config, records=records, front_idx=front, baselines=baselines)
    return {"dir": run_dir, "records": records, "front": front, "paths": paths, "config": config}


def test_front_csv_and_json(run, space) -> None:
    assert len(run["front"]) >= 3
    rows = list(csv.DictReader(run["paths"]["front_csv"].open()))
    assert len(rows) == len(run["front"])
    for row, i in zip(rows, run["front"]):
        rec = run["records"][i]
        assert int(row["eval"]) == rec["eval"]
        assert [float(row[f"obj:{n}"]) for n in NAMES] == pytest.approx(rec["objectives"], rel=1e-12)
        counts = sum(int(v) for k, v in row.items() if k.startswith("precision:"))
        assert counts == sum(v.knob == "precision" for v in space.variables)
        assert int(row["weight_bytes"]) == sum(rec["metrics"]["_data"]["peak_bytes"].values())
        assert [int(v) for v in row["x"].split()] == rec["x"]
    data = read_front(run["dir"])
    assert data["objectives"] == NAMES and data["reference_point"] == [1.1, 1.1, 1.1]
    assert data["n_evals"] == 40 and data["front_idx"] == run["front"]
    assert [m["eval"] for m in data["members"]] == [run["records"][i]["eval"] for i in run["front"]]
    assert data["members"][0]["plan"] == run["records"][run["front"][0]]["plan"]
    assert sorted(data["baselines"]) == ["knapsack", "random"] and len(data["baselines"]["random"]) == 4
    json.loads(run["paths"]["front_json"].read_text())  # plain JSON


def test_pngs_exist_and_are_not_blank(run) -> None:
    from matplotlib.image import imread

    pngs = sorted((run["dir"] / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["front.png", "front_latency_vs_energy.png",
                                      "front_latency_vs_memory.png", "front_memory_vs_energy.png"]
    for p in pngs:
        img = imread(p)
        assert p.stat().st_size > 5000 and img.shape[0] >= 300 and img.shape[1] >= 300
        assert img[..., :3].std() > 0.05  # drawn on, not one flat colour


def test_tensorboard_scalars_hparams_image(run) -> None:
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    tb = run["dir"] / "tb"
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"front/hypervolume", "front/best_latency", "front/best_memory",
                                          "front/evaluations"}
    hv = acc.Scalars("front/hypervolume")  # one point per evaluation
    assert [e.step for e in hv] == list(range(1, 41))
    assert [e.value for e in hv] == pytest.approx([0.01 * n for n in range(1, 41)], rel=1e-6)
    assert [e.value for e in acc.Scalars("front/evaluations")] == [8, 16, 24, 32, 40]

    front = EventAccumulator(str(tb / "front"))
    front.Reload()
    images = front.Images("front/figure")
    assert len(images) == 1  # the second write_run_outputs replaced the first, no duplicate
    assert images[0].encoded_image_string == run["paths"]["front_png"].read_bytes()

    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(tb))
    mux.Reload()
    hparams = mux.PluginRunToTagToContent("hparams")
    from experiments.sweep.ids import record_id

    sessions = {r for r in hparams if r.startswith("front/") and "_hparams_/session_start_info" in hparams[r]}
    expected = {f"front/{record_id(run['records'][i])}" for i in set(run["front"]) | {3}}
    assert sessions == expected  # every front member and every baseline, named by plan id
    assert not any("_hparams_/experiment" in tags for tags in hparams.values())  # columns from all sessions
    rec = run["records"][run["front"][0]]
    first = plugin_data_pb2.HParamsPluginData.FromString(
        hparams[f"front/{record_id(rec)}"]["_hparams_/session_start_info"])
    hp = first.session_start_info.hparams
    assert hp["~eval"].number_value == rec["eval"] and hp["Origin"].string_value == rec["algo"]
    assert hp["Plan id"].string_value == record_id(rec) and hp["Pareto front"].bool_value is True
    assert hp["~weight_bytes"].number_value == sum(rec["metrics"]["_data"]["peak_bytes"].values())
    assert any(k.startswith("precision=") for k in hp) and any(k.startswith("placement=") for k in hp)
    counts = {k.partition("=")[2]: int(v.number_value) for k, v in hp.items() if k.startswith("precision=") and
              v.number_value}
    assert hp["Knob precision"].string_value == ", ".join(
        f"{c} x{n}" for c, n in sorted(counts.items(), key=lambda cn: (-cn[1], cn[0])))
    base = plugin_data_pb2.HParamsPluginData.FromString(
        hparams[f"front/{record_id(run['records'][3])}"]["_hparams_/session_start_info"]).session_start_info.hparams
    assert base["Origin"].string_value == "baseline:unmodified"
    tensors = mux.Tensors(f"front/{record_id(rec)}", "plan sweep/latency ms [estimated]")
    assert float(tensors[0].tensor_proto.float_val[0]) == pytest.approx(rec["objectives"][0] * 1e3, rel=1e-6)


def test_projector_served_by_tensorboard_plugin(run) -> None:
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin
    from werkzeug.test import Client

    tb = str(run["dir"] / "tb")
    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(tb)
    mux.Reload()
    plugin = ProjectorPlugin(base_plugin.TBContext(logdir=tb, data_provider=MultiplexerDataProvider(mux, tb)))
    apps = plugin.get_plugin_apps()
    info = json.loads(Client(apps["/info"]).get("/info?run=front").data)
    (embedding,) = info["embeddings"]
    n = len(run["front"])
    assert embedding["tensorShape"] == [n, 3]
    reply = Client(apps["/tensor"]).get(f"/tensor?run=front&name={embedding['tensorName']}")
    assert reply.status_code == 200
    points = np.frombuffer(reply.data, dtype=np.float32).reshape(n, 3)
    assert points.min() == pytest.approx(0.0) and points.max() == pytest.approx(1.0)  # min-max per objective
    meta = Client(apps["/metadata"]).get(f"/metadata?run=front&name={embedding['tensorName']}").data.decode()
    lines = meta.strip().split("\n")
    assert lines[0].split("\t") == ["id", "eval", "origin", *NAMES] and len(lines) == n + 1


def test_markov_fits_on_written_run(run, space) -> None:
    from agents.markov import fit_from_runs

    (run["dir"] / "space.json").write_text(space.to_json())
    model = fit_from_runs([run["dir"]])
    assert model.n_sequences == len(run["front"])
    assert all(space.is_valid(x) for x in model.sample(space, 5, np.random.default_rng(0)))


def test_bad_inputs_are_refused(tmp_path, space) -> None:
    records = make_records(space, 3)
    with pytest.raises(InvalidArgumentError, match=r"config\['objectives'\]"):
        write_run_outputs(tmp_path, config={}, records=records, front_idx=[0])
    with pytest.raises(InvalidArgumentError, match="`front_idx` must index `records`"):
        write_run_outputs(tmp_path, config={"objectives": NAMES}, records=records, front_idx=[5])
    with pytest.raises(InvalidArgumentError, match=r"has 2 values but config\['objectives'\] names 3"):
        write_run_outputs(tmp_path, config={"objectives": NAMES}, records=[{**records[0], "objectives": [1, 2]}],
                          front_idx=[0])
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        read_front(tmp_path / "nowhere")


def test_quality_as_fourth_objective_follows_the_sweep_config(tmp_path, space) -> None:
    """A sweep config lists quality apart (``quality = "objective"``): records then carry four values."""
    records = make_records(space, 6)
    for r in records:
        r["objectives"] = [*r["objectives"], 0.01 * r["eval"]]
    config = {"objectives": NAMES, "quality": "objective", "reference_point": [1.1] * 4}
    write_run_outputs(tmp_path, config=config, records=records, front_idx=[0, 2])
    assert read_front(tmp_path)["objectives"] == [*NAMES, "quality"]
    assert len(list((tmp_path / "plots").glob("front_*_vs_*.png"))) == 6
    row = next(csv.DictReader((tmp_path / "front.csv").open()))
    assert float(row["obj:quality"]) == 0.0


# TensorBoard's vendored bleach warns on import of the hparams plugin.
@pytest.mark.filterwarnings("ignore:html5lib's sanitizer is deprecated:DeprecationWarning")
def test_hparams_plugin_serves_the_front_as_session_groups(run) -> None:
    """What the HParams tab (table and parallel coordinates) asks TensorBoard's hparams plugin for."""
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams.hparams_plugin import HParamsPlugin
    from werkzeug.test import Client

    tb = str(run["dir"] / "tb")
    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(tb)
    mux.Reload()
    plugin = HParamsPlugin(base_plugin.TBContext(logdir=tb, multiplexer=mux,
                                                 data_provider=MultiplexerDataProvider(mux, tb)))
    apps = plugin.get_plugin_apps()
    reply = Client(apps["/experiment"]).post("/experiment", data=json.dumps({"experimentName": ""}),
                                             content_type="application/json")
    experiment = json.loads(reply.data)
    columns = [h["name"] for h in experiment["hparamInfos"]]
    assert {"Origin", "Plan id", "Sweep", "~eval", "~weight_bytes", "precision=float32"} <= set(columns)
    # TensorBoard orders the columns that differ by name and ticks the first five: the knob columns come first.
    differing = [h["name"] for h in experiment["hparamInfos"] if h.get("differs")]
    knob_columns = [c for c in differing if c.startswith("Knob ")]
    assert knob_columns and differing[:len(knob_columns)] == knob_columns and differing[-1].startswith("~")
    assert "Knob precision" in differing[:5] and "Knob placement" in differing[:5]
    assert sorted(m["name"]["tag"] for m in experiment["metricInfos"]) == sorted(
        ["plan sweep/latency ms [estimated]", "plan sweep/memory MiB [estimated]", "plan sweep/energy mJ [estimated]"])
    request = {"experimentName": "", "startIndex": 0, "sliceSize": 1000,
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]}
    reply = Client(apps["/session_groups"]).post("/session_groups", data=json.dumps(request),
                                                 content_type="application/json")
    groups = json.loads(reply.data)
    assert groups["totalSize"] == len(set(run["front"]) | {3})
    from experiments.sweep.ids import record_id

    rec = run["records"][run["front"][0]]
    by_name = {g["name"]: g for g in groups["sessionGroups"]}
    values = {m["name"]["tag"]: m["value"] for m in by_name[f"sweep/{record_id(rec)}"]["metricValues"]}
    tags = ["plan sweep/latency ms [estimated]", "plan sweep/memory MiB [estimated]", "plan sweep/energy mJ [estimated]"]
    assert [values[t] for t in tags] == pytest.approx([rec["objectives"][0] * 1e3, rec["objectives"][1] / 2**20,
                                                       rec["objectives"][2] * 1e3], rel=1e-6)


def test_two_sweeps_in_one_logdir_have_their_own_scalar_groups(tmp_path, space) -> None:
    """Per-plan metrics are scalars too (HParams reads them): each sweep's land in its own ``plan <sweep>`` group."""
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem

    from experiments.reporting.hparams import metric_group, write_sessions

    for sweep, seed in (("a", 3), ("b/x", 4)):
        records = make_records(space, 6, seed=seed)
        write_sessions(tmp_path / sweep.replace("/", "_") / "tb" / "front", names=NAMES, records=records,
                       front_idx=pareto(records), sweep=sweep)
    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    groups: dict[str, set[str]] = {}
    for run_name, tags in mux.Runs().items():
        for tag in (t for t in tags["tensors"] if not t.startswith("_hparams_")):
            groups.setdefault(tag.partition("/")[0], set()).add(run_name.partition("/")[0])
    assert groups == {"plan a": {"a"}, "plan b_x": {"b_x"}}  # one group per sweep, each holding only its plans
    assert metric_group("") == "plan" and metric_group("  my  sweep ") == "plan my sweep"
