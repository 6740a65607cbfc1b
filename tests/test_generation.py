"""The generation engine on the tiny Llama: batched greedy answers equal one-at-a-time answers and the
streamed answer (one code path), batches are padded on the left, only continuations come back, an adapter
loads as the registered model serves it, and the streaming latency metrics are sane."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fineflow.models.engine import (
    GenerationOptions,
    Generator,
    TokenStream,
    load_generator,
    serving_metrics,
)

PROMPTS = [
    [{"role": "user", "content": text}]
    for text in (
        "hi",
        "How do I reset my Nimbus thermostat?",
        "ok",
        "What does one extra room sensor cost, roughly, in dollars?",
        "x",
        "Tell me about the warranty.",
    )
]
MAX_NEW_TOKENS = 10
GREEDY = GenerationOptions.greedy(MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama with larger random weights: at the default init every prompt gets the same
    near-uniform next-token distribution, and greedy answers would not depend on the prompt at all."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = tmp_path_factory.mktemp("sharp-tiny-model")
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def generator(sharp_model_dir, tmp_path_factory) -> Generator:
    return load_generator(str(sharp_model_dir), None, tmp_path_factory.mktemp("models"), "fp32")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_batched_greedy_equals_one_at_a_time(generator):
    batched = generator.generate_token_ids(PROMPTS, GREEDY, batch_size=4)
    single = [generator.generate_token_ids([prompt], GREEDY, batch_size=1)[0] for prompt in PROMPTS]
    assert batched == single
    assert len({tuple(ids) for ids in batched}) > 1  # answers depend on the prompt: the check has teeth
    assert all(0 < len(ids) <= MAX_NEW_TOKENS for ids in batched)
    texts = generator.generate_batch(PROMPTS, GREEDY, batch_size=4)
    assert texts == [generator.tokenizer.decode(ids, skip_special_tokens=True) for ids in single]


def test_batches_are_padded_on_the_left(generator, monkeypatch):
    seen = []
    real_generate = generator.model.generate

    def spy(**kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))
        return real_generate(**kwargs)

    monkeypatch.setattr(generator.model, "generate", spy)
    generator.generate_token_ids(PROMPTS, GenerationOptions.greedy(2), batch_size=len(PROMPTS))
    ((input_ids, mask),) = seen
    lengths = mask.sum(dim=1)
    assert lengths.min() < lengths.max()  # prompts of different lengths share the batch
    for row_ids, row_mask in zip(input_ids, mask, strict=True):
        padding = int((row_mask == 0).sum())
        assert row_mask[:padding].sum() == 0 and bool(row_mask[padding:].all())  # pads first, then prompt
        assert (row_ids[:padding] == generator.tokenizer.pad_token_id).all()
    # sorted by length: the longest prompt (no padding) comes first
    assert lengths[0] == lengths.max()


def test_only_the_continuation_up_to_the_end_token_comes_back(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    answer = tokenizer("ok", add_special_tokens=False)["input_ids"]

    class FakeModel:
        generation_config = SimpleNamespace(eos_token_id=eos)

        def generate(self, input_ids, attention_mask, **kwargs):
            tail = torch.tensor([[*answer, eos, pad, pad]] * input_ids.shape[0])
            return torch.cat([input_ids, tail], dim=1)

    fake = Generator(FakeModel(), tokenizer, "cpu", "fake", None)
    prompts = PROMPTS[:2]
    assert fake.generate_token_ids(prompts, GREEDY, batch_size=2) == [[*answer, eos]] * 2
    assert fake.generate_batch(prompts, GREEDY, batch_size=2) == ["ok", "ok"]


def test_adapter_generator_matches_the_registered_model(sharp_model_dir, tmp_path):
    """load_generator with an adapter gives the registered pyfunc model's answers, and differs from the
    base model: the adapter is really applied."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    from fineflow.models.pyfunc import LoraAdapterModel

    adapter = tmp_path / "adapter"
    torch.manual_seed(1)
    lora = LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(LlamaForCausalLM.from_pretrained(sharp_model_dir), lora).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(sharp_model_dir).save_pretrained(adapter)

    tuned = load_generator(str(sharp_model_dir), str(adapter), tmp_path / "models", "fp32")
    base = load_generator(str(sharp_model_dir), None, tmp_path / "models", "fp32")
    # merged: plain transformer weights, the adapted projections moved and the others untouched
    assert not isinstance(tuned.model, PeftModel)
    tuned_weights, base_weights = tuned.model.state_dict(), base.model.state_dict()
    assert tuned_weights.keys() == base_weights.keys()
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tuned_weights[q_proj], base_weights[q_proj])
    k_proj = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(tuned_weights[k_proj], base_weights[k_proj])
    assert tuned.tokenizer.padding_side == "left"
    answers = tuned.generate_batch(PROMPTS, GREEDY, batch_size=3)
    assert answers != base.generate_batch(PROMPTS, GREEDY, batch_size=3)

    served = LoraAdapterModel()
    served.load_context(
        SimpleNamespace(
            model_config={
                "base_model": str(sharp_model_dir),
                "precision": "fp32",
                "batch_size": 3,
                "max_new_tokens": MAX_NEW_TOKENS,
            },
            artifacts={"adapter": str(adapter)},
        )
    )
    assert served.predict(None, PROMPTS, params={"max_new_tokens": MAX_NEW_TOKENS}) == answers


def test_token_stream_skips_the_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    timer = TokenStream(AutoTokenizer.from_pretrained(tiny_model_dir), (), None)
    timer.put(torch.tensor([[5, 6, 7]]))  # generate hands over the prompt first
    timer.put(torch.tensor([8]))
    timer.put(torch.tensor([9]))
    timer.end()
    assert len(timer.arrivals) == 2 and timer.arrivals[0] <= timer.arrivals[1]


def test_serving_metrics(generator):
    metrics = serving_metrics(generator, PROMPTS[:3], GenerationOptions.greedy(6), runs=2, warmup_requests=1)
    assert set(metrics) == {
        "ttft_p50_s",
        "ttft_p95_s",
        "tpot_p50_s",
        "tpot_p95_s",
        "e2e_p50_s",
        "e2e_p95_s",
        "throughput_tokens_per_s",
        "requests",
        "output_tokens",
    }
    assert metrics["requests"] == 6
    assert 6 <= metrics["output_tokens"] <= 6 * 6
    for name in ("ttft", "tpot", "e2e"):
        assert 0 < metrics[f"{name}_p50_s"] <= metrics[f"{name}_p95_s"]
    assert metrics["ttft_p50_s"] <= metrics["e2e_p50_s"] and metrics["tpot_p95_s"] < metrics["e2e_p95_s"]
    assert metrics["throughput_tokens_per_s"] > 0


def test_sampling_is_seeded_by_torch(generator):
    torch.manual_seed(3)
    sampled = GenerationOptions(MAX_NEW_TOKENS, do_sample=True)
    first = generator.generate_batch(PROMPTS[:2], sampled, batch_size=2)
    torch.manual_seed(3)
    again = generator.generate_batch(PROMPTS[:2], sampled, batch_size=2)
    assert first == again and len(first) == 2


def test_streamed_greedy_output_equals_the_batched_output(generator):
    """One code path: streaming a request gives the batch's token ids and text, piece by piece."""
    batched_ids = generator.generate_token_ids(PROMPTS, GREEDY, batch_size=len(PROMPTS))
    batched_texts = generator.generate_batch(PROMPTS, GREEDY, batch_size=len(PROMPTS))
    for messages, ids, text in zip(PROMPTS, batched_ids, batched_texts, strict=True):
        pieces: list[str] = []
        streamed = generator.stream(generator.encode(messages), GREEDY, on_text=pieces.append)
        assert streamed.token_ids == ids
        assert streamed.text == "".join(pieces) == text
        assert len(streamed.arrivals) == len(ids) and streamed.prompt_tokens > 0
        ended = ids[-1] in generator.end_token_ids
        assert streamed.finish_reason == ("stop" if ended else "length")


def test_a_stream_cancelled_before_its_turn_generates_nothing(generator):
    cancel = threading.Event()
    cancel.set()
    streamed = generator.stream(generator.encode(PROMPTS[0]), GREEDY, cancel=cancel)
    assert (streamed.token_ids, streamed.text, streamed.finish_reason) == ([], "", "stop")


def test_greedy_options_take_no_sampling_settings():
    with pytest.raises(ValueError, match="greedy"):
        GenerationOptions(MAX_NEW_TOKENS, do_sample=False, temperature=0.7)
    assert GenerationOptions.from_temperature(8, 0.0, top_p=0.9, top_k=None) == GenerationOptions.greedy(8)
    assert GenerationOptions.greedy(8).sampling_kwargs()["do_sample"] is False
    assert GenerationOptions.from_temperature(8, 0.7, top_p=None, top_k=None).sampling_kwargs() == {
        "do_sample": True,
        "temperature": 0.7,
    }


def test_a_streamed_batch_answers_each_request_as_it_would_be_answered_alone(generator):
    """`stream_batch`: one `generate` call for several streamed requests (different prompt lengths, limits
    and stop strings); each gets the token ids, text, pieces and finish reason it gets alone, in fp32."""
    from fineflow.models.engine import StreamRequest

    alone = [generator.stream(generator.encode(m), GREEDY) for m in PROMPTS]
    stop = alone[1].text[3:5]  # a stop string the second answer meets
    options = [GREEDY] * len(PROMPTS)
    options[1] = GenerationOptions.greedy(MAX_NEW_TOKENS, stop=(stop,))
    options[3] = GenerationOptions.greedy(4)  # a shorter limit than the rest of the batch
    expected = [generator.stream(generator.encode(m), o) for m, o in zip(PROMPTS, options, strict=True)]
    assert (
        expected[1].text == alone[1].text[: alone[1].text.index(stop)] and expected[1].finish_reason == "stop"
    )
    pieces: list[list[str]] = [[] for _ in PROMPTS]
    requests = [
        StreamRequest(generator.encode(m), o, on_text=p.append)
        for m, o, p in zip(PROMPTS, options, pieces, strict=True)
    ]
    batched = generator.stream_batch(requests)
    for one, many, streamed in zip(expected, batched, pieces, strict=True):
        assert many.token_ids == one.token_ids, (one.finish_reason, many.finish_reason, one.text, many.text)
        assert many.text == one.text == "".join(streamed)
        assert (many.finish_reason, many.prompt_tokens) == (one.finish_reason, one.prompt_tokens)
        assert len(many.arrivals) == len(many.token_ids)


def test_a_streamed_batch_skips_cancelled_requests_and_refuses_mixed_settings(generator):
    from fineflow.models.engine import StreamRequest

    cancelled = threading.Event()
    cancelled.set()
    requests = [
        StreamRequest(generator.encode(PROMPTS[0]), GREEDY, cancel=cancelled),
        StreamRequest(generator.encode(PROMPTS[1]), GREEDY),
    ]
    gone, kept = generator.stream_batch(requests)
    assert (gone.token_ids, gone.text) == ([], "")
    assert kept.token_ids == generator.stream(generator.encode(PROMPTS[1]), GREEDY).token_ids
    sampled = GenerationOptions.from_temperature(MAX_NEW_TOKENS, 0.7, top_p=None, top_k=None)
    structured = GenerationOptions.greedy(MAX_NEW_TOKENS, json_schema={"type": "object"})
    for other in (sampled, structured):
        with pytest.raises(ValueError, match="batch_key"):
            generator.stream_batch([requests[1], StreamRequest(generator.encode(PROMPTS[2]), other)])
