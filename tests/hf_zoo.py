"""Tiny transformers models of many types, built from their config classes
with small sizes (no download), for the fastact.transformers tests and
benchmark.

``ZOO`` maps a model type to (group, config class, model class, overrides).
``make(model_type)`` builds the model with ``SMALL`` sizes applied to every
config and sub-config (text, vision) argument of those names, so one table
serves dense, MoE and vision-language models and every transformers release
(a class a release lacks makes ``make`` raise ``Missing``).
"""
from __future__ import annotations

import inspect

import torch
import transformers

#: small sizes, applied to every config argument of that name
SMALL = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=64, initializer_range=0.2,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
    # MoE
    moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_local_experts=4,
    n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1,
    first_k_dense_replace=1, decoder_sparse_step=1, norm_topk_prob=True,
    # multi-head latent attention (DeepSeek-V3)
    q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
    # GPT-2 style names
    n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=64, ffn_dim=64, word_embed_proj_dim=32,
    # vision towers
    depth=1, num_heads=4, out_hidden_size=32, embed_dim=32, num_global_layers=1, projection_dim=32,
    vision_output_dim=64, intermediate_layers_indices=[0], text_hidden_size=32,
    deepstack_visual_indexes=[0], num_position_embeddings=16,
    # no dropout: the patched and unpatched models draw their masks from
    # different generators (tests that want dropout set it)
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    hidden_dropout=0.0, attention_dropout=0.0, dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0,
)


class Missing(Exception):
    """The installed transformers lacks this model type."""


#: Qwen2/2.5-VL's multimodal rotary sections for head_dim 8 (4.x and 5.x names)
MROPE = {"rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [2, 1, 1]},
         "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
         # (4.52's Qwen2-VL config takes these, and the text sizes, only as
         # keyword arguments of the top-level config)
         "vision_start_token_id": 151652, "image_token_id": 151655, "video_token_id": 151656,
         **{k: SMALL[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads", "num_key_value_heads", "max_position_embeddings")}}
MROPE3 = {"rope_scaling": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True},
          "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True,
                              "rope_theta": 10000.0}}

#: model type -> (group, config class, model class, overrides)
ZOO = {
    # dense causal LMs
    "llama": ("dense", "LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("dense", "MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "qwen2": ("dense", "Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3": ("dense", "Qwen3Config", "Qwen3ForCausalLM", {}),
    "gemma": ("dense", "GemmaConfig", "GemmaForCausalLM", {"hidden_act": "gelu_pytorch_tanh"}),
    "gemma2": ("dense", "Gemma2Config", "Gemma2ForCausalLM", {
        "final_logit_softcapping": 2.0, "query_pre_attn_scalar": 8, "sliding_window": 8,
        "hidden_activation": "gelu_pytorch_tanh"}),
    "gemma3_text": ("dense", "Gemma3TextConfig", "Gemma3ForCausalLM", {
        "final_logit_softcapping": 2.0, "query_pre_attn_scalar": 8, "sliding_window": 8}),
    "phi3": ("dense", "Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0, "resid_pdrop": 0.0,
                                                        "embd_pdrop": 0.0}),
    "cohere": ("dense", "CohereConfig", "CohereForCausalLM", {"logit_scale": 0.5}),
    "cohere2": ("dense", "Cohere2Config", "Cohere2ForCausalLM", {"logit_scale": 0.5, "sliding_window": 8}),
    "granite": ("dense", "GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 2.0}),
    "olmo2": ("dense", "Olmo2Config", "Olmo2ForCausalLM", {}),
    "glm4": ("dense", "Glm4Config", "Glm4ForCausalLM", {}),
    "helium": ("dense", "HeliumConfig", "HeliumForCausalLM", {}),
    "smollm3": ("dense", "SmolLM3Config", "SmolLM3ForCausalLM", {}),
    "starcoder2": ("dense", "Starcoder2Config", "Starcoder2ForCausalLM", {"residual_dropout": 0.0,
                                                                          "embedding_dropout": 0.0}),
    "gpt2": ("dense", "GPT2Config", "GPT2LMHeadModel", {"activation_function": "gelu_new"}),
    "gpt_neox": ("dense", "GPTNeoXConfig", "GPTNeoXForCausalLM", {"hidden_act": "gelu"}),
    "phi": ("dense", "PhiConfig", "PhiForCausalLM", {"hidden_act": "gelu_new"}),
    "opt": ("dense", "OPTConfig", "OPTForCausalLM", {"activation_function": "relu", "dropout": 0.0}),
    "nemotron": ("dense", "NemotronConfig", "NemotronForCausalLM", {"hidden_act": "relu2"}),
    "stablelm": ("dense", "StableLmConfig", "StableLmForCausalLM", {}),
    # mixture of experts
    "mixtral": ("moe", "MixtralConfig", "MixtralForCausalLM", {}),
    "qwen2_moe": ("moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM", {}),
    "qwen3_moe": ("moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", {}),
    "olmoe": ("moe", "OlmoeConfig", "OlmoeForCausalLM", {}),
    "deepseek_v3": ("moe", "DeepseekV3Config", "DeepseekV3ForCausalLM", {"num_key_value_heads": 4}),
    "granitemoe": ("moe", "GraniteMoeConfig", "GraniteMoeForCausalLM", {"logits_scaling": 2.0}),
    "gpt_oss": ("moe", "GptOssConfig", "GptOssForCausalLM", {"sliding_window": 8}),
    # vision-language models (text-only probe batches)
    "qwen2_vl": ("vlm", "Qwen2VLConfig", "Qwen2VLForConditionalGeneration", MROPE),
    "qwen2_5_vl": ("vlm", "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", MROPE),
    "qwen3_vl": ("vlm", "Qwen3VLConfig", "Qwen3VLForConditionalGeneration", MROPE3),
    "llava": ("vlm", "LlavaConfig", "LlavaForConditionalGeneration", {}),
    "gemma3": ("vlm", "Gemma3Config", "Gemma3ForConditionalGeneration", {}),
    "mllama": ("vlm", "MllamaConfig", "MllamaForConditionalGeneration", {"rope_scaling": {"rope_type": "default"}}),
}


def _kwargs_for(cls, values: dict, explicit: dict = {}) -> dict:
    """The ``SMALL``-sized ``values`` that ``cls`` takes, plus the
    ``explicit`` overrides of the entry when it takes ``**kwargs`` (older
    configs set some attributes only from them)."""
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in values.items() if k in params or (takes_any and k in explicit)}


def _sub_config_kwargs(default, name: str, overrides: dict) -> dict:
    """The small sub-config, of the class the model's default config has
    there (an AutoConfig entry names it by model_type)."""
    sub = type(getattr(default, name))
    return {"model_type": sub.model_type, **_kwargs_for(sub, {**SMALL, **overrides}, overrides)}


def config(model_type: str, **overrides):
    if model_type not in ZOO:
        raise KeyError(model_type)
    _, config_name, _, extra = ZOO[model_type]
    config_cls = getattr(transformers, config_name, None)
    if config_cls is None:
        raise Missing(f"transformers {transformers.__version__} has no {config_name}")
    values = {**SMALL, **extra, **overrides}
    kwargs = _kwargs_for(config_cls, values, {**extra, **overrides})
    subs = [name for name in getattr(config_cls, "sub_configs", {}) if name in ("text_config", "vision_config")]
    default = config_cls() if subs else None
    for name in subs:
        kwargs[name] = _sub_config_kwargs(default, name, {**extra, **overrides} if name == "text_config" else {})
    cfg = config_cls(**kwargs)
    cfg._attn_implementation = "eager"
    for sub in ("text_config", "vision_config"):
        if getattr(cfg, sub, None) is not None:
            getattr(cfg, sub)._attn_implementation = "eager"
    return cfg


def make(model_type: str, dtype=torch.float32, seed: int = 0, **overrides):
    cfg = config(model_type, **overrides)
    model_cls = getattr(transformers, ZOO[model_type][2], None)
    if model_cls is None:
        raise Missing(f"transformers {transformers.__version__} has no {ZOO[model_type][2]}")
    torch.manual_seed(seed)
    return model_cls(cfg).to(dtype)


def vocab(model) -> int:
    return model.get_output_embeddings().out_features
