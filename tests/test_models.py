"""Model zoo: interface, training signal, parameter budgets and the memory model's fixed defects."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from conftest import repository_params
from lvm.config import SCHEMA
from lvm.models import _REGISTRY, MODEL_NAMES, MODEL_PARAMS, config_keys, count_parameters, create_model

D, L, B = 16, 20, 3
# small but structurally complete: every model keeps >= 2 layers where it stacks them
SMALL = dict(hidden_dim=32, lstm_layers=2, gru_layers=2, transformer_layers=2, transformer_heads=4,
             transformer_ff=64, amn_hidden=32, attention_window=4, attention_stride=3, chunk_size=5, hierarchy_layers=2, hierarchy_levels=2, memory_slots=24,
             memory_layers=2, dropout=0.0, anchor="none", normalize="none")
# params.yaml's model section, no normaliser: what create_model is given where a test sets nothing itself
SHIPPED = {**repository_params()["model"], "normalize": "none"}
ORIGINAL_PARAMS = dict(lstm=5.1e6, gru=7.1e6, transformer=17.9e6, amn=1.5e6, hierarchical_gru=8.6e6,
                       memory_gru=11.3e6, sparse_transformer=17.9e6)  # (the original's Phase 3 gave no size)


def small(name, **overrides):
    torch.manual_seed(0)
    return create_model(name, input_dim=D, context_length=L, **{**SMALL, **overrides})


def batch(b=B, length=L, seed=1):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, length, D, generator=g), dim=-1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shape_norm_and_raw(name):
    model = small(name).eval()
    x = batch()
    pred = model(x)
    assert pred.shape == (B, D) and pred.dtype == torch.float32
    torch.testing.assert_close(pred.norm(dim=-1), torch.ones(B))
    pred2, raw = model(x, return_raw=True)
    assert raw.shape == (B, D)
    torch.testing.assert_close(pred2, F.normalize(raw, dim=-1))
    torch.testing.assert_close(pred2, pred)
    assert model(batch(b=1)).shape == (1, D)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_rebuild_from_config(name):
    model = small(name).eval()
    cfg = model.config
    assert cfg["name"] == name and cfg["input_dim"] == D and cfg["context_length"] == L
    assert set(cfg) == {"name", "input_dim", "context_length", "normalize", *MODEL_PARAMS[name]}
    import json
    cfg = json.loads(json.dumps(cfg))  # what a checkpoint stores
    torch.manual_seed(123)  # different init, so equality below comes from the state dict
    rebuilt = create_model(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"}).eval()
    assert count_parameters(rebuilt) == count_parameters(model)
    rebuilt.load_state_dict(model.state_dict())
    x = batch()
    torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deterministic_init(name):
    a, b = small(name), small(name)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trains(name):
    model = small(name).train()
    x = batch(b=8)
    target = F.normalize(torch.randn(8, D, generator=torch.Generator().manual_seed(2)), dim=-1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    losses = []
    for _ in range(20):
        _, raw = model(x, return_raw=True)
        loss = F.mse_loss(raw, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bf16_autocast(name):
    model = small(name).eval()
    x = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred, raw = model(x, return_raw=True)
    assert pred.dtype == torch.float32 and raw.dtype == torch.float32
    assert torch.isfinite(pred).all()
    torch.testing.assert_close(pred.norm(dim=-1), torch.ones(B))
    # bf16 is coarse, but the prediction must still point the same way as in fp32
    assert F.cosine_similarity(pred, model(x)).min() > 0.95


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_is_deterministic_with_dropout(name):
    model = small(name, dropout=0.3).eval()
    x = batch()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts_match_original(name):
    # the original's sizes at D=768, L=100 with the params.yaml defaults (constructor defaults)
    n = count_parameters(create_model(name, input_dim=768, context_length=100, **SHIPPED))
    assert abs(n / ORIGINAL_PARAMS[name] - 1) < 0.10, n


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        create_model("lstn", input_dim=D, context_length=L, **SHIPPED)
    for name in MODEL_NAMES:
        assert name in str(e.value)


def test_unused_keys_ignored_used_keys_validated():
    model = create_model("lstm", input_dim=D, context_length=L,
                         **{**SHIPPED, "hidden_dim": 32, "chunk_size": 7, "memory_slots": -1, "whatever": "x"})
    assert model.config == {"name": "lstm", "input_dim": D, "context_length": L, "hidden_dim": 32,
                            "lstm_layers": SHIPPED["lstm_layers"], "dropout": SHIPPED["dropout"],
                            "anchor": SHIPPED["anchor"], "normalize": "none"}
    with pytest.raises(ValueError, match="model.anchor"):
        create_model("gru", input_dim=D, context_length=L, **{**SHIPPED, "anchor": "mean"})
    with pytest.raises(ValueError, match="train.normalize"):
        create_model("gru", input_dim=D, context_length=L, **{**SHIPPED, "normalize": "minmax"})
    with pytest.raises(ValueError, match="model.hidden_dim"):
        create_model("gru", input_dim=D, context_length=L, **{**SHIPPED, "hidden_dim": 0})
    with pytest.raises(ValueError, match="model.dropout"):
        create_model("amn", input_dim=D, context_length=L, **{**SHIPPED, "dropout": 1.5})
    with pytest.raises(ValueError, match="model.transformer_heads"):
        create_model("transformer", input_dim=D, context_length=L,
                     **{**SHIPPED, "hidden_dim": 30, "transformer_heads": 4})
    with pytest.raises(ValueError, match="model.memory_slots"):
        create_model("memory_gru", input_dim=D, context_length=L, **{**SHIPPED, "memory_slots": True})
    with pytest.raises(ValueError, match="data.context_length"):
        create_model("lstm", input_dim=D, context_length=0, **SHIPPED)


def test_model_params_cover_defaults():
    assert MODEL_NAMES == ("lstm", "gru", "transformer", "amn", "hierarchical_gru", "memory_gru", "sparse_transformer")
    assert MODEL_PARAMS["memory_gru"] == ("hidden_dim", "memory_slots", "memory_layers", "dropout", "anchor")
    assert "memory_slots" not in MODEL_PARAMS["gru"]
    for name, keys in MODEL_PARAMS.items():
        assert "dropout" in keys and "anchor" in keys
    # every model.* key of params is read by some model, and every key a model reads is one of params.yaml's
    assert set().union(*MODEL_PARAMS.values()) == set(SCHEMA["model"])
    for name, keys in MODEL_PARAMS.items():
        # the constructors have no defaults of their own: the one place is params.yaml
        signature = inspect.signature(_REGISTRY[name].__init__).parameters
        assert all(signature[k].default is inspect.Parameter.empty for k in keys), name
        # a model built from the section takes exactly its values, and config_keys is what it keeps
        config = create_model(name, input_dim=D, context_length=L, **SHIPPED).config
        assert {k: config[k] for k in keys} == {k: SHIPPED[k] for k in keys}, name
        assert set(config) == config_keys(name), name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_missing_key_is_an_error_naming_it(name):
    # create_model fills in nothing (it once read the checkout's params.yaml for a missing key)
    for key in MODEL_PARAMS[name]:
        given = {k: v for k, v in SHIPPED.items() if k != key}
        with pytest.raises(ValueError, match=rf"^model\.{key}: missing \({name} reads "):
            create_model(name, input_dim=D, context_length=L, **given)
    # several missing: each named; a key only other models read may be left out
    other = next(k for k in SCHEMA["model"] if k not in MODEL_PARAMS[name])
    first, last = MODEL_PARAMS[name][0], MODEL_PARAMS[name][-1]
    with pytest.raises(ValueError, match=rf"^model\.{first}, model\.{last}: missing"):
        create_model(name, input_dim=D, context_length=L,
                     **{k: v for k, v in SHIPPED.items() if k not in (first, last)})
    create_model(name, input_dim=D, context_length=L, **{k: v for k, v in SHIPPED.items() if k != other})
    with pytest.raises(TypeError, match="normalize"):  # train.normalize too has no default
        create_model(name, input_dim=D, context_length=L, **repository_params()["model"])


@pytest.mark.parametrize("length", [50, 200])
def test_hierarchical_other_lengths(length):
    model = create_model("hierarchical_gru", input_dim=D, context_length=length, **{**SMALL, "chunk_size": 10})
    assert model(batch(length=length)).shape == (B, D)


def test_hierarchical_left_pads_a_length_that_is_not_a_multiple_of_chunk_size():
    model = create_model("hierarchical_gru", input_dim=D, context_length=95, **{**SMALL, "chunk_size": 10}).eval()
    x = batch(length=95)
    padded = torch.cat([torch.zeros(B, 5, D), x], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded), atol=1e-6)
        assert model(batch(length=5)).shape == (B, D)  # shorter than one chunk


@pytest.mark.parametrize("levels", [3, 4])
def test_deeper_hierarchy_is_causal_at_every_position_of_a_1000_vector_context(levels):
    """chunks -> sections -> (chapters ->) document at L = 1,000: changing the vectors after t never
    changes the prediction at t, at positions inside a chunk, at chunk and section edges and near the end."""
    length, chunk = 1000, 10
    model = create_model("hierarchical_gru", input_dim=D, context_length=length,
                         **{**SMALL, "chunk_size": chunk, "hierarchy_levels": levels}).eval()
    assert len(model.middle) == levels - 2
    assert model.padding(length) == -length % chunk ** (levels - 1)
    x = batch(b=2, length=length)
    with torch.no_grad():
        seq_x = model(x, all_positions=True)
        assert seq_x.shape == (2, length, D)
        torch.testing.assert_close(seq_x[:, -1], model(x), rtol=1e-5, atol=1e-5)
        for t in (0, 9, 10, 99, 100, 537, 998):
            y = x.clone()
            y[:, t + 1:] = batch(b=2, length=length, seed=9)[:, t + 1:]
            seq_y = model(y, all_positions=True)
            torch.testing.assert_close(seq_y[:, :t + 1], seq_x[:, :t + 1], rtol=0, atol=1e-6)
            assert (seq_y[:, t + 1:] - seq_x[:, t + 1:]).abs().max() > 1e-4, t


def test_deeper_hierarchy_reads_every_level_and_left_pads():
    """Three levels: the head reads 3 states, a vector many sections back still reaches the prediction
    (through the global GRU), and a length that is no multiple of chunk^2 is left-padded with zeros."""
    model = create_model("hierarchical_gru", input_dim=D, context_length=250,
                         **{**SMALL, "chunk_size": 5, "hierarchy_levels": 3}).eval()
    assert model.head[0].in_features == 3 * SMALL["hidden_dim"]
    assert model.padding(250) == 0 and model.padding(240) == 10
    x = batch(length=240)
    with torch.no_grad():
        padded = torch.cat([torch.zeros(B, 10, D), x], dim=1)
        torch.testing.assert_close(model(x), model(padded), rtol=1e-5, atol=1e-6)
        y = x.clone()
        y[:, 3] = batch(seed=4, length=240)[:, 3]  # 9 sections before the last position
        assert (model(y) - model(x)).abs().max() > 1e-6
    with pytest.raises(ValueError, match="model.hierarchy_levels: must be >= 2"):
        create_model("hierarchical_gru", input_dim=D, context_length=250, **{**SMALL, "hierarchy_levels": 1})


def test_two_levels_have_no_middle_parameters():
    """hierarchy_levels 2 is the two-level model: no middle GRU, a head over 2 states; a deeper one
    builds local and global first, in the same order, so those start from the same weights."""
    two, three = small("hierarchical_gru"), small("hierarchical_gru", hierarchy_levels=3)
    assert len(two.middle) == 0 and two.head[0].in_features == 2 * SMALL["hidden_dim"]
    assert not any(k.startswith("middle") for k in two.state_dict())
    assert any(k.startswith("middle.0") for k in three.state_dict())
    for key, value in two.state_dict().items():
        if key.startswith(("local", "glob")):
            torch.testing.assert_close(three.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("length, window, stride", [(20, 4, 3), (37, 8, 5), (64, 64, 64), (9, 16, 4)])
def test_sparse_attention_equals_dense_attention_under_its_pattern(length, window, stride):
    """The blocked computation is the dense masked attention of sparse_pattern, at every position and
    for the last one alone; lengths that are and are not multiples of the window."""
    from lvm.models.sparse_transformer import sparse_attention, sparse_pattern

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, length, 8, generator=g) for _ in range(3))
    mask = sparse_pattern(length, window, stride)
    assert mask.diagonal().all() and not mask.triu(1).any()  # every query sees itself, nothing later
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(sparse_attention(q, k, v, window, stride), dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse_attention(q, k, v, window, stride, last_only=True), dense[:, :, -1:],
                               rtol=1e-5, atol=1e-5)


def test_sparse_pattern_keeps_the_window_and_the_strided_positions():
    from lvm.models.sparse_transformer import sparse_pattern

    m = sparse_pattern(1000, 64, 64)
    assert m[999].nonzero().flatten().tolist() == [*range(63, 936, 64), *range(936, 1000)]
    assert m.sum(1).max() <= 64 + 1000 // 64  # the sparse cost: at most w + L/s keys per query


def test_sparse_transformer_is_causal_at_1000_and_has_the_transformers_parameters():
    length = 1000
    model = create_model("sparse_transformer", input_dim=D, context_length=length,
                         **{**SMALL, "attention_window": 32, "attention_stride": 32}).eval()
    dense = create_model("transformer", input_dim=D, context_length=length, **SMALL)
    assert count_parameters(model) == count_parameters(dense)
    x = batch(b=2, length=length)
    with torch.no_grad():
        seq_x = model(x, all_positions=True)
        torch.testing.assert_close(seq_x[:, -1], model(x), rtol=1e-5, atol=1e-5)
        for t in (0, 31, 32, 500, 998):
            y = x.clone()
            y[:, t + 1:] = batch(b=2, length=length, seed=9)[:, t + 1:]
            seq_y = model(y, all_positions=True)
            torch.testing.assert_close(seq_y[:, :t + 1], seq_x[:, :t + 1], rtol=0, atol=1e-6)
            assert (seq_y[:, t + 1:] - seq_x[:, t + 1:]).abs().max() > 1e-4, t
        # a vector 900 positions back still reaches the last prediction (through a strided position)
        y = x.clone()
        y[:, 63] = batch(b=2, length=length, seed=4)[:, 63]
        assert (model(y) - model(x)).abs().max() > 1e-6


def test_transformer_long_context_and_causality():
    model = create_model("transformer", input_dim=D, context_length=300, **SMALL).eval()
    x = batch(length=300)
    assert model(x).shape == (B, D)
    assert model(x[:, :1]).shape == (B, D)  # a single vector is a valid context too
    # positions matter: reversing the context changes the prediction
    assert not torch.allclose(model(x), model(x.flip(1)))


def test_transformer_last_only_matches_full_causal_pass():
    model = small("transformer").eval()
    x = batch()
    h = model.inp(x)
    from lvm.models.transformer import sinusoidal_positions
    h = h + sinusoidal_positions(L, h.shape[-1])
    full, last = h, h
    for block in model.blocks:
        full = block(full)
    for i, block in enumerate(model.blocks):
        last = block(last, last_only=i == len(model.blocks) - 1)
    torch.testing.assert_close(last[:, -1], full[:, -1])
    # causal: perturbing the final input vector leaves earlier positions untouched
    h2 = h.clone()
    h2[:, -1] += 1.0
    full2 = h2
    for block in model.blocks:
        full2 = block(full2)
    torch.testing.assert_close(full2[:, :-1], full[:, :-1])


# --- memory_gru: the original's defects must stay fixed ---------------------------------------

def test_memory_every_parameter_gets_gradient():
    model = small("memory_gru").train()
    _, raw = model(batch(), return_raw=True)
    F.mse_loss(raw, torch.randn(B, D)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    names = dict(model.named_parameters())
    for key in ("memory", "log_sharpness", "write_key.weight", "write_value.weight", "write_gate.weight",
                "read2_query.weight", "read_query.weight"):
        assert key in names
    assert (names["log_sharpness"].grad != 0).all()  # first read, write and second read sharpness


def test_memory_eval_independent_of_previous_forwards():
    model = small("memory_gru")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x1, x2, x3 = batch(seed=1), batch(seed=2), batch(seed=3)
    for mode in ("train", "eval"):  # training forwards must not leave anything behind either
        getattr(model, mode)()
        model(x1)
        y = model.eval()(x2)
        getattr(model, mode)()
        model(x3)
        torch.testing.assert_close(model.eval()(x2), y, rtol=0, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_memory_first_read_depends_on_sample():
    model = small("memory_gru").eval()
    x = batch(b=2)
    weights, content = model.first_read(x)
    assert weights.shape == (2, L, SMALL["memory_slots"])
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, L))
    assert not torch.allclose(weights[0, 0], weights[1, 0])
    assert not torch.allclose(content[0, 0], content[1, 0])


def test_memory_write_matches_explicit_updated_memory():
    # the rank-1 shortcut must equal reading from an explicitly built per-sample M + w a^T
    model = small("memory_gru").eval()
    x = batch()
    from lvm.models.memory import content_read
    _, read = model.first_read(x)
    _, h_n = model.gru(torch.cat([x, read], -1))
    h = h_n[-1]
    M = model.memory
    w, _ = content_read(model.write_key(h), M, model.log_sharpness[1].exp())
    a = torch.sigmoid(model.write_gate(h)) * model.write_value(h)
    M_new = M + w[:, :, None] * a[:, None, :]                                  # [B, S, D]
    q = model.read2_query(h)
    cos = F.cosine_similarity(q[:, None, :], M_new, dim=-1)
    p = F.softmax(model.log_sharpness[2].exp() * cos, dim=-1)
    read2 = torch.einsum("bs,bsd->bd", p, M_new)
    expected = model.head(torch.cat([h, read2], -1))
    _, raw = model(x, return_raw=True)
    torch.testing.assert_close(raw, expected)
    # and the write actually changes what the second read returns
    p0 = F.softmax(model.log_sharpness[2].exp() * F.cosine_similarity(q[:, None, :], M[None], dim=-1), -1)
    assert not torch.allclose(read2, p0 @ M)


# --- lvm.models.fastrnn: the CPU GRU must be nn.GRU's maths -----------------------------------

def test_fast_gru_matches_nn_gru_outputs_and_gradients():
    from lvm.models.fastrnn import gru_stack
    torch.manual_seed(0)
    gru = torch.nn.GRU(12, 8, 3).double()
    x = torch.randn(7, 3, 12, dtype=torch.double, requires_grad=True)
    y_ref, h_ref = gru(x)
    y, h = gru_stack(gru, x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-12)
    with torch.no_grad():  # the no-graph path (eval) skips the backward's factors: same outputs
        torch.testing.assert_close(gru_stack(gru, x)[0], y_ref, rtol=0, atol=1e-12)
    w = torch.randn_like(y_ref)
    loss_ref = (y_ref * w).sum() + h_ref.square().sum()
    loss = (y * w).sum() + h.square().sum()
    for a, b in zip(torch.autograd.grad(loss_ref, [x, *gru.parameters()]),
                    torch.autograd.grad(loss, [x, *gru.parameters()])):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def test_fast_gru_bf16_autocast_is_close_and_returns_float32_grads():
    from lvm.models.fastrnn import gru_stack
    torch.manual_seed(0)
    gru = torch.nn.GRU(16, 16, 2)
    x = torch.randn(20, 4, 16)
    y_ref, _ = gru(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = gru_stack(gru, x)
    assert y.dtype == torch.float32  # the state stays float32 under autocast
    assert (y - y_ref).abs().max() < 0.03
    y[-1].sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in gru.parameters())


@pytest.mark.parametrize("name", ["gru", "hierarchical_gru", "memory_gru"])
def test_fast_gru_path_matches_nn_gru_path(name, monkeypatch):
    from lvm.models import fastrnn
    model = small(name).train()
    x = batch()
    target = torch.randn(B, D)
    grads = []
    for enabled in (False, True):
        monkeypatch.setattr(fastrnn, "ENABLED", enabled)
        model.zero_grad()
        _, raw = model(x, return_raw=True)
        F.mse_loss(raw, target).backward()
        grads.append((raw.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (raw0, g0), (raw1, g1) = grads
    torch.testing.assert_close(raw1, raw0, rtol=1e-5, atol=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-5, msg=n)


# --- every-position prediction, anchors and the normalised space (train.targets, model.anchor, train.normalize)

SEQUENCE_MODELS = [n for n in MODEL_NAMES if n != "amn"]


@pytest.mark.parametrize("anchor", ["none", "decay_mean"])
@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_every_position_is_causal(name, anchor):
    # changing the vectors after position t never changes the prediction at t (and does change later ones)
    model = small(name, anchor=anchor).eval()
    if anchor != "none":  # a zero head would hide a leak in it: give it weights
        torch.manual_seed(5)
        for layer in model.OUTPUT_LAYERS:
            torch.nn.init.normal_(model.get_submodule(layer).weight, std=0.1)
    x = batch()
    t = 11
    y = x.clone()
    y[:, t + 1:] = batch(seed=9)[:, t + 1:]
    with torch.no_grad():
        seq_x, seq_y = model(x, all_positions=True), model(y, all_positions=True)
    assert seq_x.shape == (B, L, D)
    torch.testing.assert_close(seq_y[:, :t + 1], seq_x[:, :t + 1], rtol=0, atol=1e-6)
    assert (seq_y[:, t + 1:] - seq_x[:, t + 1:]).abs().max() > 1e-3
    # the last position of the sequence output is the ordinary prediction after the whole context
    torch.testing.assert_close(seq_x[:, -1], model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in SEQUENCE_MODELS if n != "hierarchical_gru"])
def test_every_position_equals_prefix_prediction(name):
    # position t of one pass = the model run on the first t+1 vectors (hierarchical_gru's chunk grid
    # is aligned to the end of the context, so its prefixes are chunked differently)
    model = small(name).eval()
    x = batch()
    with torch.no_grad():
        seq = model(x, all_positions=True)
        for t in (0, 4, 13):
            torch.testing.assert_close(seq[:, t], model(x[:, :t + 1]), rtol=1e-5, atol=1e-5)


def test_amn_refuses_every_position():
    with pytest.raises(ValueError, match="train.targets: last"):
        small("amn")(batch(), all_positions=True)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fresh_anchored_model_equals_its_baseline(name):
    import numpy as np
    from lvm.baselines import CopyLast, ExpDecayMean
    x = batch()
    for anchor, baseline in (("decay_mean", ExpDecayMean(decay=0.8)), ("last", CopyLast())):
        model = small(name, anchor=anchor, normalize="standard").eval()
        model.set_anchor_decay(0.8)
        model.set_normalizer(torch.full((D,), 0.1), torch.full((D,), 2.0))
        expected = torch.from_numpy(baseline.predict(x.numpy()))
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
        if model.SEQUENCE:  # at every position too: the baseline on the context so far
            seq = model(x, all_positions=True)
            for t in (0, 6):
                torch.testing.assert_close(seq[:, t], torch.from_numpy(baseline.predict(x[:, :t + 1].numpy())),
                                           rtol=0, atol=1e-6)
    # and training moves it off the baseline (the zero layer gets a gradient)
    model = small(name, anchor="decay_mean").train()
    _, raw = model(x, return_raw=True)
    (1 - F.cosine_similarity(raw, batch(seed=3)[:, 0], dim=-1)).mean().backward()
    grads = [model.get_submodule(n).weight.grad for n in model.OUTPUT_LAYERS]
    assert any(g is not None and g.abs().max() > 0 for g in grads)


@pytest.mark.parametrize("kind", ["center", "standard", "robust"])
def test_normalizer_round_trips(kind):
    import numpy as np
    from lvm.models.base import fit_normalizer
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((500, D)) * rng.uniform(0.1, 3, D) + rng.uniform(-1, 1, D)
    shift, scale = fit_normalizer(rows, kind)
    z = (torch.tensor(rows, dtype=torch.float32) - shift) / scale
    torch.testing.assert_close(z * scale + shift, torch.tensor(rows, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    centre = z.median(0).values if kind == "robust" else z.mean(0)
    assert centre.abs().max() < 0.02
    if kind == "standard":
        torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(D), rtol=1e-3, atol=1e-3)
    # a model whose head outputs z predicts z de-normalised: the original space
    model = small("gru", normalize=kind)
    model.set_normalizer(shift, scale)
    model.head_output = lambda x, all_positions=False: x[:, -1]  # identity head: reads the normalised input
    x = torch.tensor(rows[:L], dtype=torch.float32)[None]
    torch.testing.assert_close(model.predict_raw(x)[0], x[0, -1], rtol=1e-5, atol=1e-5)
