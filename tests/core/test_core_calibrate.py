"""Calibration internals: the least-squares refits, row weights, consumer discovery, and the real model."""

import copy

import pytest
import torch

import dytune
from dytune.conversion.init.calibrate import _sink_weights, fit_alpha
from dytune.errors import DytuneError
from dytune.norms import find_norms
from dytune.conversion.init.refit import affine_fit, logit_metric_affine, trace_consumers
from dytune.testing import run_in_fresh_process, tiny_model, tiny_tokenizer

TEXTS = [f"The quick brown fox number {i} jumps over the lazy dog, again and again." for i in range(24)]


def test_affine_fit_recovers_scale_and_shift_and_weights_rows():
    torch.manual_seed(0)
    z = torch.tanh(torch.randn(500, 8))
    gamma, beta = torch.linspace(0.5, 2.0, 8), torch.linspace(-0.3, 0.3, 8)
    g, b, err = affine_fit(z, gamma * z + beta, None, with_bias=True)
    torch.testing.assert_close(g, gamma, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, beta, atol=1e-5, rtol=1e-5)
    assert float(err.max()) < 1e-10
    # one row disagrees; weighting it heavily pulls the fit towards it
    y = gamma * z
    y[0] += 5.0
    light = affine_fit(z, y, None, with_bias=False)[0]
    heavy = affine_fit(z, y, torch.where(torch.arange(500) == 0, 1000.0, 1.0), with_bias=False)[0]
    target_row0 = y[0] / z[0]
    assert ((heavy - target_row0).abs() < (light - target_row0).abs()).all()


@pytest.mark.parametrize("with_bias", [False, True])
def test_logit_metric_fit_matches_plain_least_squares_under_identity_head(with_bias):
    torch.manual_seed(0)
    z, y = torch.randn(300, 6), torch.randn(300, 6) + 0.5
    g0, b0, _ = affine_fit(z, y, None, with_bias=with_bias)
    g, b = logit_metric_affine(z, y, None, torch.eye(6), with_bias=with_bias, ridge=0.0)
    torch.testing.assert_close(g, g0, atol=1e-5, rtol=1e-4)
    if with_bias:
        torch.testing.assert_close(b, b0, atol=1e-5, rtol=1e-4)
    # a head that reads channels jointly gives a different (logit-optimal) answer
    head = torch.randn(40, 6)
    g, b = logit_metric_affine(z, y, None, head, with_bias=with_bias, ridge=0.0)
    logit_err = lambda gam, bet: float(((gam * z + (0 if bet is None else bet) - y) @ head.T).pow(2).mean())  # noqa: E731
    assert logit_err(g, b) < logit_err(g0, b0)


def test_fit_alpha_recovers_known_alpha_with_and_without_affine_refit(monkeypatch):
    model = tiny_model("llama")
    site = find_norms(model)[0]
    torch.manual_seed(0)
    x = torch.randn(3000, site.hidden_size) * 2
    gamma = site.gamma()
    target = gamma * torch.tanh(0.3 * x)
    assert abs(float(fit_alpha(x, site, target=target).alpha) - 0.3) < 1e-3
    new_gamma = torch.linspace(0.2, 3.0, site.hidden_size)
    result = fit_alpha(x, site, target=new_gamma * torch.tanh(0.3 * x), refit_affine=True)
    assert abs(float(result.alpha) - 0.3) < 1e-3 and result.rel_error < 1e-6 and result.beta is None  # RMSNorm
    torch.testing.assert_close(result.gamma, new_gamma, atol=1e-3, rtol=1e-3)
    monkeypatch.setattr("dytune.conversion.init.calibrate.REFIT_ADDS_BIAS", True)  # the opt-in fitted offset
    result = fit_alpha(x, site, target=new_gamma * torch.tanh(0.3 * x) + 0.1, refit_affine=True)
    assert abs(float(result.alpha) - 0.3) < 1e-3 and result.rel_error < 1e-6
    torch.testing.assert_close(result.beta, torch.full_like(new_gamma, 0.1), atol=1e-3, rtol=1e-3)


def test_per_channel_alpha_with_affine_refit_recovers_each_channels_alpha():
    model = tiny_model("llama")
    site = find_norms(model)[0]
    torch.manual_seed(0)
    x = torch.randn(3000, site.hidden_size) * 2
    alphas = torch.logspace(-1, 0.3, site.hidden_size)  # 0.1 .. 2, several grid steps apart
    new_gamma = torch.linspace(0.5, 3.0, site.hidden_size)  # not the norm's: the refit must find it
    result = fit_alpha(x, site, per_channel=True, target=new_gamma * torch.tanh(alphas * x), refit_affine=True)
    torch.testing.assert_close(result.alpha, alphas, rtol=2e-3, atol=0)
    torch.testing.assert_close(result.gamma, new_gamma, rtol=2e-3, atol=0)
    assert result.rel_error < 1e-6


def test_golden_search_finds_each_elements_minimum_with_one_evaluation_a_step():
    from dytune.conversion.init.calibrate import GOLDEN_STEPS, _golden

    best = torch.tensor([0.11, 0.5, 0.93, 2.0])  # one minimum near each end of the bracket, two inside
    calls = []

    def error(alpha):
        calls.append(alpha)
        return (alpha.log() - best.log()).pow(2)

    found = _golden(error, torch.full((4,), 0.1), torch.full((4,), 2.1))
    torch.testing.assert_close(found, best, rtol=2e-4, atol=0)
    assert len(calls) == GOLDEN_STEPS + 2


def test_sink_weights_mark_the_first_real_token_for_either_padding_side():
    right = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    left = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "attention_mask": torch.tensor([[0, 0, 1, 1]])}
    assert _sink_weights([right, left], 30.0).tolist() == [30, 1, 1, 30, 1, 1, 1, 30, 1]


@pytest.mark.parametrize("arch,norm,consumers,out_proj", [
    ("llama", "input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "self_attn.o_proj"),
    ("llama", "post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj"),
    ("gpt2", "ln_1", ["attn.c_attn"], "attn.c_proj"),
    ("gpt2", "ln_2", ["mlp.c_fc"], "mlp.c_proj"),
    ("gpt_neox", "post_attention_layernorm", ["mlp.dense_h_to_4h"], "mlp.dense_4h_to_h"),
])
def test_trace_consumers_finds_who_reads_the_norm(arch, norm, consumers, out_proj):
    model = tiny_model(arch)
    blocks = dict(model.named_modules())
    prefix = next(n for n in blocks if n.endswith(".0") and n.count(".") <= 2 and hasattr(blocks[n], norm))
    block = blocks[prefix]
    names = {m: n for n, m in block.named_modules()}
    found, out = trace_consumers(block, {norm: getattr(block, norm)},
                                 lambda: model(torch.tensor([[1, 5, 9, 30]])))[norm]
    assert sorted(names[m] for m in found) == sorted(consumers)
    assert names[out] == out_proj


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_each_refit_level_brings_the_logits_closer(arch):
    tok = tiny_tokenizer()
    base = tiny_model(arch)
    enc = tok(TEXTS[16:], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = base(**enc).logits
    errors = {}
    for refit in ("none", "affine", "linear"):
        model = copy.deepcopy(base)
        report = dytune.convert(model, tokenizer=tok, calibration=TEXTS[:16], calibration_refit=refit, progress=False)
        assert report.refit == refit and model.config.dyt["refit"] == refit
        with torch.no_grad():
            errors[refit] = float((model(**enc).logits - reference).pow(2).mean())
    assert errors["affine"] < errors["none"] / 2, errors
    assert errors["linear"] < errors["affine"], errors


def test_linear_refit_runs_each_block_to_its_end_only_when_it_needs_the_output():
    """The refit reads each site's input and each output projection's input from runs that stop there, and
    the original sub-layers' outputs from the one run of the original block; the last linear of a block
    (down_proj) runs in full forwards only: find_norms' trace, the final run of the block (one per batch) and the
    final norm's probe (one batch: it reads the last block's output, which that final run computed). The consumers
    are traced once, on the original block. The unoptimised loop ran it 5 times per batch."""
    model = tiny_model("llama")
    down = model.model.layers[0].mlp.down_proj
    calls = []  # the original block's copy carries the hook too: count the converted block's own runs only
    down.register_forward_hook(lambda m, a, out: calls.append(m) if m is down else None)
    dytune.convert(model, tokenizer=tiny_tokenizer(), calibration=TEXTS, calibration_refit="linear", progress=False)
    batches = -(-len(TEXTS) // 4)  # calibration_batches' batch size
    assert len(calls) == batches + 2, len(calls)


def test_record_calls_stops_after_the_output_when_outputs_are_kept():
    from dytune._blocks import StopForward, record_calls

    block = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    ran = []
    block[2].register_forward_pre_hook(lambda m, a: ran.append(True))
    with record_calls([block[1]], outputs=True, stop=True) as calls:
        with pytest.raises(StopForward):
            block(torch.ones(1, 3))
    assert calls[0][0].output.shape == (1, 3) and not ran  # block[1] ran, block[2] did not


def test_refit_none_copies_gamma_exactly_and_linear_refit_cannot_be_reverted():
    model = tiny_model("llama")
    gamma = model.model.layers[0].input_layernorm.weight.detach().clone()
    dytune.convert(model, tokenizer=tiny_tokenizer(), calibration=TEXTS, calibration_refit="none", progress=False)
    assert torch.equal(model.model.layers[0].input_layernorm.weight, gamma)
    model = tiny_model("llama")
    q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    dytune.convert(model, tokenizer=tiny_tokenizer(), calibration=TEXTS, calibration_refit="linear", progress=False)
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, q)  # the map was folded in
    with pytest.raises(DytuneError, match="refit='linear'"):
        dytune.revert(model)
    with pytest.raises(DytuneError, match="linear needs calibration_method sequential"):
        dytune.convert(tiny_model("llama"), tokenizer=tiny_tokenizer(), calibration_refit="linear",
                       calibration_method="parallel", progress=False)


def test_refit_ridge_shrinks_the_folded_maps_or_pulls_them_to_the_original_and_is_recorded():
    """A stronger ridge gives smaller consumer weights (the map's gain) and a looser fit; config.dyt says which."""
    tok = tiny_tokenizer()
    base = tiny_model("llama")
    enc = tok(TEXTS[16:], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = base(**enc).logits
    norms, errors = {}, {}
    for ridge in (1e-3, 1.0):
        model = copy.deepcopy(base)
        report = dytune.convert(model, tokenizer=tok, calibration=TEXTS[:16], calibration_refit="linear",
                                refit_ridge=ridge, progress=False)
        assert report.refit_ridge == ridge and model.config.dyt["refit_ridge"] == ridge
        mlp = model.model.layers[1].mlp  # a consumer of the norm's map, and a refitted output projection
        norms[ridge] = float(mlp.gate_proj.weight.detach().norm()), float(mlp.down_proj.weight.detach().norm())
        with torch.no_grad():
            errors[ridge] = float((model(**enc).logits - reference).pow(2).mean())
    assert norms[1.0][0] < 0.9 * norms[1e-3][0] and norms[1.0][1] < 0.9 * norms[1e-3][1], norms
    assert errors[1.0] > errors[1e-3], errors
    model = tiny_model("llama")
    dytune.convert(model, tokenizer=tok, calibration=TEXTS[:16], calibration_refit="affine", progress=False)
    assert "refit_ridge" not in model.config.dyt  # only the linear refit has one
    affine_error = float((model(**enc).logits.detach() - reference).pow(2).mean())
    # pulling towards what each layer computed before (the affine fit, the original projections) instead of zero:
    # the same strength loses far less fit, and an overwhelming ridge gives back the affine refit
    for ridge in (1.0, 1e6):
        model = copy.deepcopy(base)
        dytune.convert(model, tokenizer=tok, calibration=TEXTS[:16], calibration_refit="linear", refit_ridge=ridge,
                       refit_ridge_to="original", progress=False)
        assert model.config.dyt["refit_ridge_to"] == "original"
        with torch.no_grad():
            errors[f"original {ridge}"] = float((model(**enc).logits - reference).pow(2).mean())
    assert errors["original 1.0"] < errors[1.0] / 10, errors
    assert errors["original 1000000.0"] == pytest.approx(affine_error, rel=0.05), (errors, affine_error)
    with pytest.raises(DytuneError, match="refit_ridge must be >= 0"):
        dytune.convert(tiny_model("llama"), tokenizer=tok, calibration_refit="linear", refit_ridge=-1.0,
                       progress=False)
    with pytest.raises(DytuneError, match="refit_ridge_to must be one of zero, original, got 'one'"):
        dytune.convert(tiny_model("llama"), tokenizer=tok, calibration=TEXTS[:16], calibration_refit="linear",
                       refit_ridge_to="one", progress=False)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_linear_refit_folds_the_final_map_into_an_untied_head_that_saves_and_loads(arch, tmp_path):
    model = tiny_model(arch, tie_word_embeddings=True)
    embed = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    assert torch.equal(head_before, embed)  # tied, as SmolLM2's is
    tok = tiny_tokenizer()
    dytune.convert(model, tokenizer=tok, calibration=TEXTS, calibration_refit="linear", progress=False)
    head = model.get_output_embeddings().weight
    assert not model.config.tie_word_embeddings and head is not model.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight, embed)  # tokens are still read as before
    assert not torch.equal(head, head_before)  # the final norm's map went into the head
    final = dict(dytune.dyt_modules(model))["model.norm" if arch == "llama" else "transformer.ln_f"]
    assert torch.equal(final.weight, torch.ones_like(final.weight))  # gamma moved into the map
    dytune.save(model, tmp_path / "dyt", tok)
    ids = [[1, 5, 9, 30, 2, 7, 11, 40]]
    with torch.no_grad():
        reference = model(torch.tensor(ids)).logits
    torch.save(reference, tmp_path / "logits.pt")  # test-only reference, never loaded by dytune
    code = (f"import torch, dytune; m = dytune.load({str(tmp_path / 'dyt')!r}); "
            f"print(torch.equal(m(torch.tensor({ids})).logits, torch.load({str(tmp_path / 'logits.pt')!r})), "
            "m.get_output_embeddings().weight is m.get_input_embeddings().weight)")
    assert run_in_fresh_process(code).split() == ["True", "False"]


@pytest.mark.slow
def test_real_model_conversion_closes_most_of_the_naive_gap(tmp_path):
    """SmolLM2-135M: all 61 RMSNorms converted; the default calibration is far better than alpha=0.5."""
    from datasets import Dataset

    from dytune.eval.perplexity import token_loss

    tok = dytune.load_tokenizer("smollm2-135m")
    texts = [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                     tokenize=False) for q, a in [
        ("What is the capital of France?", "The capital of France is Paris, a city on the Seine."),
        ("Give me three tips for staying healthy.", "Eat a balanced diet, exercise regularly and sleep enough."),
        ("Explain photosynthesis in one sentence.", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
        ("Write a haiku about autumn.", "Red leaves drift slowly, the cool wind hums through the trees, the year exhales."),
    ]]
    ids = [tok(t)["input_ids"] for t in texts]
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})

    def ce(model) -> float:
        totals = token_loss(model, data, pad_id=tok.pad_token_id or 0)
        return totals.nll / totals.tokens

    model = dytune.load_model("smollm2-135m")
    before = ce(model)
    report = dytune.convert(model, tokenizer=tok, progress=False)
    after = ce(model)
    naive = dytune.load_model("smollm2-135m")
    dytune.convert(naive, alpha_init="constant:0.5")
    naive_ce = ce(naive)
    print(f"SmolLM2 CE: original {before:.3f}, calibrated DyT {after:.3f}, alpha=0.5 DyT {naive_ce:.3f}")
    assert len(report.converted) == 61 and report.refit == "affine"
    assert all(1e-3 <= layer.alpha <= 1e3 and 0 <= layer.fit_error < 1 for layer in report.converted)
    assert before < 5.0  # measured 4.05 on these four short exchanges
    assert after < naive_ce - 3.0  # measured: calibrated 11.06, alpha=0.5 16.74
