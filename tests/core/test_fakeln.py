"""FakeLN, the fixed-scale form of DyT (`form="fakeln"`): y = weight * (alpha * xc) + bias, alpha = 1/sigma.

Its formula and precision, the calibrated sigma, the conversion report, save/load (fresh process, old configs,
unknown forms, the portable copy), gradients, and the uniform-scale auxiliary loss of Baroni et al. 2025."""

import json

import pytest
import torch

import dytune
from dytune.conversion.config import FORMS, ConvertConfig
from dytune.dyt import DyT, set_kernel
from dytune.errors import DytuneError
from dytune.norms import find_norms
from dytune.testing import run_in_fresh_process, run_without_dytune, save_reference, tiny_model, tiny_tokenizer
from dytune.train.uniform_scale import UniformScaleHooks, uniform_scale_loss

TEXTS = [f"The quick brown fox number {i} jumps over the lazy dog{', again' * (i % 4)}." for i in range(12)]
IDS = torch.tensor([[1, 5, 9, 30, 2, 7, 11, 40]])


def _fakeln(arch: str, **options):
    model = tiny_model(arch)
    conversion = dytune.convert(model, tokenizer=tiny_tokenizer(), calibration=TEXTS, form="fakeln",
                                progress=False, **options)
    return model, conversion


def _linear_dyt(center: bool, bias: bool = True, per_channel: bool = False) -> DyT:
    torch.manual_seed(0)
    dyt = DyT(16, alpha_init=torch.rand(16) + 0.5 if per_channel else 0.37, per_channel=per_channel, bias=bias,
              form="linear", center=center)
    with torch.no_grad():
        dyt.weight.uniform_(0.5, 1.5)
        if bias:
            dyt.bias.uniform_(-0.3, 0.3)
    return dyt


# -- the module -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("center", [False, True])
def test_linear_form_is_the_hand_formula_in_float32_under_a_bf16_model(center):
    dyt = _linear_dyt(center)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), dyt).to(torch.bfloat16)
    assert model[0].weight.dtype == torch.bfloat16 and {p.dtype for p in dyt.parameters()} == {torch.float32}
    x = (torch.randn(3, 5, 16) * 4 + 1.5).to(torch.bfloat16)
    xf = x.float()
    xc = xf - xf.mean(-1, keepdim=True) if center else xf
    by_hand = dyt.weight * (dyt.alpha * xc) + dyt.bias  # float32, rounded to bf16 once at the end
    y = dyt(x)
    assert y.dtype == torch.bfloat16 and torch.equal(y, by_hand.to(torch.bfloat16))
    # and it is that formula, not tanh: no saturation, centred or not as asked (float64 reference)
    xd = x.double()
    ref = ((xd - xd.mean(-1, keepdim=True) if center else xd) * 0.37 * dyt.weight.double() + dyt.bias.double()).detach()
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2)
    assert float(ref.abs().max()) > 3  # beyond |weight| + |bias| <= 1.8, all that weight * tanh(.) + bias reaches
    assert "form=linear" in repr(dyt) and f"center={center}" in repr(dyt) and "form=tanh" in repr(DyT(4))


def test_linear_form_never_takes_the_fused_tanh_kernel():
    dyt = _linear_dyt(center=False, bias=False)
    x = torch.randn(4, 4096, 16)  # far above the fused kernel's size threshold
    previous = set_kernel("fused")
    try:
        y = dyt(x)
    finally:
        set_kernel(previous)
    assert torch.equal(y, dyt.weight * (dyt.alpha * x))


def test_gradient_reaches_alpha_weight_and_bias():
    dyt = _linear_dyt(center=True)
    x = torch.randn(6, 16).requires_grad_()
    g = torch.randn(6, 16)
    (dyt(x) * g).sum().backward()
    xc = x.detach() - x.detach().mean(-1, keepdim=True)
    torch.testing.assert_close(dyt.alpha.grad, (g * dyt.weight * xc).sum().reshape(1).detach())
    torch.testing.assert_close(dyt.weight.grad, (g * dyt.alpha * xc).sum(0).detach())
    torch.testing.assert_close(dyt.bias.grad, g.sum(0))
    dgc = (g * dyt.weight * dyt.alpha).detach()  # centring is a projection: its gradient too has zero mean
    torch.testing.assert_close(x.grad, dgc - dgc.mean(-1, keepdim=True))


def test_bad_forms_are_refused():
    with pytest.raises(DytuneError, match="unknown DyT form 'cubic': expected one of tanh, linear"):
        DyT(8, form="cubic")
    with pytest.raises(DytuneError, match="center=True is for the linear form only"):
        DyT(8, center=True)
    with pytest.raises(DytuneError, match="form must be one of dyt, fakeln, got 'fake'"):
        ConvertConfig(form="fake")
    assert set(FORMS.values()) == set(dytune.dyt.FORMS)  # the config's names map onto the module's forms


def test_the_form_is_a_train_key_too():
    from dytune.train.config import parse_config

    assert parse_config(None, ["--form", "fakeln"], model="m").convert_config().form == "fakeln"


# -- conversion -----------------------------------------------------------------------------------------------

def _site_inputs(model, texts):
    """Each DyT's inputs on every text, run alone (no padding), first position dropped: (tokens, hidden) per site."""
    kept = {name: [] for name, _ in dytune.dyt_modules(model)}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: kept[name].append(args[0][0, 1:].detach()))
             for name, m in dytune.dyt_modules(model)]
    tok = tiny_tokenizer()
    try:
        with torch.no_grad():
            for text in texts:
                model(tok(text, return_tensors="pt").input_ids)
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(xs) for name, xs in kept.items()}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # RMSNorm (RMS, no centring), LayerNorm (std, centred)
def test_calibrated_alpha_is_one_over_the_mean_non_first_token_scale(arch):
    norms = {s.name: s for s in find_norms(tiny_model(arch))}
    model, conversion = _fakeln(arch, calibration_refit="none")
    # every site's input depends only on the sites before it, which sequential calibration had converted when it
    # recorded: the converted model reproduces exactly what each site was calibrated on
    for name, x in _site_inputs(model, TEXTS).items():
        dyt, site = model.get_submodule(name), norms[name]
        layernorm = site.norm_type == "layernorm"
        assert dyt.form == "linear" and dyt.center == layernorm
        xc = x - x.mean(-1, keepdim=True) if layernorm else x
        sigma = (xc.pow(2).mean(-1) + site.eps).sqrt().mean()
        torch.testing.assert_close(1 / dyt.alpha.detach(), sigma.reshape(1), rtol=1e-5, atol=0)
        assert torch.equal(dyt.weight.detach(), site.gamma())  # copied exactly (refit none)
        if layernorm:
            assert torch.equal(dyt.bias.detach(), site.beta())
    assert conversion.report.form == "fakeln" and "converted to fakeln" in conversion.report.table()


def test_fit_error_is_the_relative_mse_against_the_norm():
    original = tiny_model("llama")
    site = find_norms(original)[0]  # the first norm reads the embeddings, unchanged by conversion
    model, conversion = _fakeln("llama", calibration_refit="none")
    tok = tiny_tokenizer()
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    x = original.get_input_embeddings()(enc.input_ids)[enc.attention_mask.bool()].detach()
    with torch.no_grad():
        y = site.module(x)
        fake = model.get_submodule(site.name)(x)
    expected = float((fake - y).pow(2).mean() / y.pow(2).mean())
    assert conversion.report.converted[0].fit_error == pytest.approx(expected, rel=1e-4)
    assert 0 < expected < 0.5


def test_affine_and_linear_refits_work_with_fakeln():
    _, none = _fakeln("llama", calibration_refit="none")
    affine_model, affine = _fakeln("llama", calibration_refit="affine")
    first_none, first_affine = none.report.converted[0], affine.report.converted[0]  # same input in both
    assert first_affine.alpha == first_none.alpha and first_affine.fit_error <= first_none.fit_error
    assert affine_model.config.dyt["refit"] == "affine"
    linear_model, linear = _fakeln("llama", calibration_refit="linear")
    assert linear.report.refit == "linear" and all(0 <= layer.fit_error < 0.5 for layer in linear.report.converted)
    assert torch.isfinite(linear_model(IDS).logits).all()


def test_fixed_alphas_and_per_channel_alpha_with_fakeln():
    model = tiny_model("gpt2")
    dytune.convert(model, alpha_init="constant:0.02", form="fakeln")
    forms = {(m.form, m.center, float(m.alpha.detach())) for _, m in dytune.dyt_modules(model)}
    assert forms == {("linear", True, float(torch.tensor(0.02)))}
    scalar, _ = _fakeln("llama", calibration_refit="none")
    per_channel, _ = _fakeln("llama", calibration_refit="none", per_channel=True)
    for (name, a), (_, b) in zip(dytune.dyt_modules(scalar), dytune.dyt_modules(per_channel)):
        assert b.per_channel and b.alpha.shape == (64,)
        assert torch.equal(b.alpha.detach(), a.alpha.detach().expand(64)), name  # one 1/sigma, per channel


# -- save and load --------------------------------------------------------------------------------------------

def test_fakeln_saves_and_loads_exactly_in_a_fresh_process(tmp_path):
    from transformers import AutoModelForCausalLM

    for arch in ("llama", "gpt2"):
        tiny_model(arch).save_pretrained(tmp_path / arch / "plain")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / arch / "plain").eval()
        dytune.convert(model, tokenizer=tiny_tokenizer(), calibration=TEXTS, form="fakeln", progress=False)
        dytune.save(model, tmp_path / arch / "dyt")
        save_reference(model, tmp_path / arch / "reference.pt", IDS)
        config = json.loads((tmp_path / arch / "dyt" / "config.json").read_text())["dyt"]
        assert config["form"] == "fakeln"
        assert {(layer["form"], layer["center"]) for layer in config["layers"]} == {("linear", arch == "gpt2")}
    out = run_in_fresh_process(f"""
        import json, torch
        import dytune
        from transformers import AutoModelForCausalLM
        for arch in ("llama", "gpt2"):
            root = {str(tmp_path)!r} + "/" + arch
            model = AutoModelForCausalLM.from_pretrained(root + "/dyt").eval()
            ref = torch.load(root + "/reference.pt")
            with torch.no_grad():
                same = torch.equal(model(torch.tensor({IDS.tolist()})).logits, ref["logits"])
            forms = sorted({{(m.form, m.center) for _, m in dytune.dyt_modules(model)}})
            print(json.dumps({{"arch": arch, "same": same, "forms": forms}}))
    """)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert rows == [{"arch": "llama", "same": True, "forms": [["linear", False]]},
                    {"arch": "gpt2", "same": True, "forms": [["linear", True]]}]


def _edit_config(directory, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config["dyt"])
    path.write_text(json.dumps(config))


def test_a_config_without_form_loads_as_tanh_and_an_unknown_form_is_refused(tmp_path):
    model = tiny_model("llama")
    dytune.convert(model, alpha_init=0.7)
    dytune.save(model, tmp_path / "old")
    with torch.no_grad():
        expected = model(IDS).logits

    def drop_forms(dyt):  # as written before forms existed
        dyt.pop("form")
        for layer in dyt["layers"]:
            del layer["form"], layer["center"]

    _edit_config(tmp_path / "old", drop_forms)
    loaded = dytune.load(str(tmp_path / "old"))
    assert {(m.form, m.center) for _, m in dytune.dyt_modules(loaded)} == {("tanh", False)}
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, expected)

    _edit_config(tmp_path / "old", lambda dyt: dyt["layers"][1].update(form="cubic"))
    with pytest.raises(DytuneError, match="names DyT form.s. cubic, which this dytune does not know"):
        dytune.load(str(tmp_path / "old"))


def test_portable_fakeln_loads_exactly_without_dytune(tmp_path):
    model, _ = _fakeln("gpt2")
    dytune.save(model, tmp_path / "dyt", tiny_tokenizer(), portable=True)
    save_reference(model, tmp_path / "reference.pt", IDS)
    stdout, stderr = run_without_dytune(f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'dyt')!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(torch.tensor({IDS.tolist()})).logits
        forms = sorted({{(m.form, m.center) for m in model.modules() if type(m).__name__ == "DyT"}})
        print("RESULT", type(model).__module__.split(".")[0], forms,
              torch.equal(logits, torch.load({str(tmp_path / 'reference.pt')!r})["logits"]))
    """, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "RESULT transformers_modules [('linear', True)] True" in stdout, stderr[-2000:]


# -- the uniform-scale auxiliary loss -------------------------------------------------------------------------

def test_uniform_scale_loss_is_zero_for_equal_scales_and_otherwise_the_formula():
    torch.manual_seed(0)
    direction = torch.randn(2, 5, 32)
    direction = direction - direction.mean(-1, keepdim=True)
    equal = direction / direction.pow(2).mean(-1, keepdim=True).sqrt() * 3.0  # every token's std is 3
    assert float(uniform_scale_loss(equal)) < 1e-10
    # RMS per token 10 (the first), 1, 2, 3: target = mean of the non-first = 2; loss = mean((s - 2)^2)
    scales = torch.tensor([10.0, 1.0, 2.0, 3.0])
    hidden = (scales[:, None] * torch.ones(4, 8)).unsqueeze(0)
    expected = ((scales - 2).pow(2).sum() / 4)
    assert float(uniform_scale_loss(hidden, center=False, eps=0.0)) == pytest.approx(float(expected))
    # an excluded token (EOS) leaves the target but not the mean; padding leaves both
    ids = torch.tensor([[5, 5, 5, 99]])
    target = 1.5  # mean of 1 and 2
    with_eos = ((scales - target).pow(2).sum() / 4)
    assert float(uniform_scale_loss(hidden, center=False, eps=0.0, input_ids=ids, exclude_token_ids=[99])) \
        == pytest.approx(float(with_eos))
    mask = torch.tensor([[1, 1, 1, 0]])
    padded = ((scales[:3] - target).pow(2).sum() / 3)
    assert float(uniform_scale_loss(hidden, center=False, eps=0.0, attention_mask=mask)) == pytest.approx(float(padded))


def test_uniform_scale_loss_is_differentiable_and_descent_evens_the_scales():
    torch.manual_seed(0)
    hidden = (torch.randn(2, 6, 16) * torch.rand(2, 6, 1) * 4).requires_grad_()
    loss = uniform_scale_loss(hidden)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert hidden.grad is not None and float(hidden.grad.abs().sum()) > 0
    with torch.no_grad():
        stepped = hidden - 0.1 * hidden.grad
    assert float(uniform_scale_loss(stepped)) < float(loss)


def test_hooks_record_the_students_final_norm_input_and_carry_its_gradient():
    model, _ = _fakeln("llama", calibration_refit="none")
    seen = []
    probe = model.model.norm.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with UniformScaleHooks(model) as hooks:  # default: the final norm, as in Baroni et al.
        assert list(hooks.centers) == ["model.norm"] and hooks.exclude_token_ids == [0]
        model(IDS)
        loss = hooks.loss(IDS)
        assert float(loss) == pytest.approx(float(uniform_scale_loss(seen[-1], center=False, input_ids=IDS,
                                                                     exclude_token_ids=[0])))
        loss.backward()
        assert float(model.model.embed_tokens.weight.grad.abs().sum()) > 0
        with torch.no_grad():  # a teacher or evaluation forward records nothing
            model(IDS)
        with pytest.raises(DytuneError, match="no input with gradients was recorded at model.norm"):
            hooks.loss(IDS)
    probe.remove()
    assert not model._forward_pre_hooks and not model.model.norm._forward_pre_hooks
    with UniformScaleHooks(model, kinds=None) as every:
        assert len(every.centers) == 5
    with pytest.raises(DytuneError, match="no converted site of kind qk"):
        UniformScaleHooks(model, kinds=("qk",))


def test_relative_uniform_scale_loss_is_scale_free_and_leaves_the_first_token_alone():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, 16, generator=g) * torch.linspace(0.5, 2.0, 6).view(1, 6, 1)
    loss = float(uniform_scale_loss(hidden, center=False, relative=True))
    assert float(uniform_scale_loss(hidden * 100, center=False, relative=True)) == pytest.approx(loss, rel=1e-4)
    sink = hidden.clone()
    sink[:, 0] *= 50  # an attention sink: ignored by the relative form, dominant in the absolute one
    assert float(uniform_scale_loss(sink, center=False, relative=True)) == pytest.approx(loss, rel=1e-6)
    assert float(uniform_scale_loss(sink, center=False)) > 10 * float(uniform_scale_loss(hidden, center=False))
    scale = hidden.float().pow(2).mean(-1).add(1e-5).sqrt()[:, 1:]
    assert loss == pytest.approx(float((scale / scale.mean() - 1).pow(2).mean()), rel=1e-5)
