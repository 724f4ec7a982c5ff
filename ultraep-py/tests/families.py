"""Every MoE block family of transformers 5.24, as a tiny standalone block (hidden 64, expert width
32, 8 experts, top-k 2; top-1 where the family allows only that), for the family tests.

``BLOCKS`` maps a family (a model type, with a suffix for a variant) to its modeling module and
the constructor call that builds the block; ``build`` evaluates it with the names the call uses,
from that module, its configuration module or ``transformers``. ``EXPECTED`` says what ultraep
does with each, as ``docs/pytorch.md`` documents it: ``"gated"`` (computed here), ``"module"``
(the experts' own math on weight views), or the reason it is refused.
"""

from __future__ import annotations

import importlib
import re

import torch
from torch import nn

BLOCKS: dict[str, tuple[str, str]] = {
    "afmoe": (
        "afmoe",
        "AfmoeSparseMoeBlock(AfmoeConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, num_shared_experts=1))",
    ),
    "aria": (
        "aria",
        "AriaTextMoELayer(AriaTextConfig(hidden_size=64, intermediate_size=32, moe_num_experts=8, moe_topk=2, moe_num_shared_experts=1))",
    ),
    "axk1": (
        "axk1",
        "AXK1MoE(AXK1Config(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "axk2": (
        "axk2",
        "AXK2MoE(AXK2Config(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "bailing_hybrid": (
        "bailing_hybrid",
        "BailingHybridMoE(BailingHybridConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_token=2, num_shared_experts=1, num_expert_group=1, topk_group=1))",
    ),
    "beam": (
        "beam",
        "BeamMoE(BeamConfig(hidden_size=64, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1))",
    ),
    "cohere2_moe": (
        "cohere2_moe",
        "Cohere2MoeSparseMoeBlock(Cohere2MoeConfig(hidden_size=64, intermediate_size=32, num_experts=8, num_experts_per_tok=2, num_shared_experts=1))",
    ),
    "dbrx": (
        "dbrx",
        "DbrxFFN(DbrxConfig(d_model=64, n_heads=4, ffn_config={'ffn_hidden_size': 32, 'moe_num_experts': 8, 'moe_top_k': 2, 'hidden_size': 64}))",
    ),
    "deepseek_ocr2": (
        "deepseek_ocr2",
        "DeepseekOcr2TextMoe(DeepseekOcr2TextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "deepseek_v2": (
        "deepseek_v2",
        "DeepseekV2Moe(DeepseekV2Config(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "deepseek_v3": (
        "deepseek_v3",
        "DeepseekV3MoE(DeepseekV3Config(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "deepseek_v32": (
        "deepseek_v32",
        "DeepseekV32MoE(DeepseekV32Config(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "deepseek_v4": (
        "deepseek_v4",
        "DeepseekV4SparseMoeBlock(DeepseekV4Config(hidden_size=64, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, mlp_layer_types=['moe', 'moe'], num_attention_heads=4, num_key_value_heads=2, head_dim=16, n_group=1, topk_group=1, num_hidden_layers=2), layer_idx=0)",
    ),
    "deepseek_v4.hash": (
        "deepseek_v4",
        "DeepseekV4SparseMoeBlock(DeepseekV4Config(hidden_size=64, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, mlp_layer_types=['hash_moe', 'moe'], num_attention_heads=4, num_key_value_heads=2, head_dim=16, n_group=1, topk_group=1, num_hidden_layers=2), layer_idx=0)",
    ),
    "doge": (
        "doge",
        "DogeCDMoE(DogeConfig(hidden_size=64, intermediate_size=32, num_experts=8, num_experts_per_tok=2))",
    ),
    "dots1": (
        "dots1",
        "Dots1MoE(Dots1Config(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "dots3_note": (
        "dots3_note",
        "Dots3NoteTextMoE(Dots3NoteTextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1, num_key_value_heads=4, shared_experts_intermediate_size=32, num_attention_heads=4, head_dim=16, num_hidden_layers=2))",
    ),
    "ernie4_5_moe": (
        "ernie4_5_moe",
        "Ernie4_5_MoeSparseMoeBlock(Ernie4_5_MoeConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, moe_num_experts=8, moe_k=2, moe_num_shared_experts=1))",
    ),
    "ernie4_5_vl_moe": (
        "ernie4_5_vl_moe",
        "Ernie4_5_VLMoeMoeBlock(Ernie4_5_VLMoeTextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=[32, 32], moe_num_experts=8, moe_k=2, moe_num_shared_experts=1))",
    ),
    "exaone_moe": (
        "exaone_moe",
        "ExaoneMoeSparseMoEBlock(ExaoneMoeConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, num_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "flex_olmo": (
        "flex_olmo",
        "FlexOlmoSparseMoeBlock(FlexOlmoConfig(hidden_size=64, intermediate_size=32, num_experts=8, num_experts_per_tok=2))",
    ),
    "flint": (
        "flint",
        "FlintSparseMoeBlock(FlintConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32))",
    ),
    "glm4_moe": (
        "glm4_moe",
        "Glm4MoeMoE(Glm4MoeConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "glm4_moe_lite": (
        "glm4_moe_lite",
        "Glm4MoeLiteMoE(Glm4MoeLiteConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "glm4v_moe": (
        "glm4v_moe",
        "Glm4vMoeTextMoE(Glm4vMoeTextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "glm5_next": (
        "glm5_next",
        "Glm5NextTextMoE(Glm5NextTextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1, num_key_value_heads=4, num_attention_heads=4, head_dim=16, num_hidden_layers=2))",
    ),
    "glm_moe_dsa": (
        "glm_moe_dsa",
        "GlmMoeDsaMoE(GlmMoeDsaConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "gpt_oss": (
        "gpt_oss",
        "GptOssMLP(GptOssConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "granitemoe": (
        "granitemoe",
        "GraniteMoeMoE(GraniteMoeConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "granitemoe_swa": (
        "granitemoe_swa",
        "GraniteMoeSWAMoE(GraniteMoeSWAConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "granitemoehybrid": (
        "granitemoehybrid",
        "GraniteMoeHybridMoE(GraniteMoeHybridConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "granitemoeshared": (
        "granitemoeshared",
        "GraniteMoeSharedMoE(GraniteMoeSharedConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "hunyuan_v1_moe": (
        "hunyuan_v1_moe",
        "HunYuanMoEV1Moe(HunYuanMoEV1Config(hidden_size=64, intermediate_size=32, num_experts=8, moe_topk=2), layer_idx=0)",
    ),
    "hy_v3": (
        "hy_v3",
        "HYV3MoE(HYV3Config(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, num_shared_experts=1))",
    ),
    "hy_v4": (
        "hy_v4",
        "HYV4MoE(HYV4Config(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "hy_v4_vl": (
        "hy_v4_vl",
        "HYV4VLMoE(HYV4VLTextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "inkling": (
        "inkling",
        "InklingMoE(InklingTextConfig(hidden_size=64, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1))",
    ),
    "inkling2": (
        "inkling2",
        "Inkling2SparseMoeBlock(Inkling2TextConfig(hidden_size=64, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2))",
    ),
    "inkling2_loop": (
        "inkling2_loop",
        "Inkling2LoopSparseMoeBlock(Inkling2LoopTextConfig(hidden_size=64, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2))",
    ),
    "jamba": (
        "jamba",
        "JambaSparseMoeBlock(JambaConfig(hidden_size=64, intermediate_size=32, num_experts=8, num_experts_per_tok=2))",
    ),
    "jetmoe": (
        "jetmoe",
        "JetMoeMoE(JetMoeConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2, kv_channels=16))",
    ),
    "kimi_linear": (
        "kimi_linear",
        "KimiLinearMoE(KimiLinearConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_token=2, num_shared_experts=1, num_expert_group=1, topk_group=1))",
    ),
    "kolibri1": (
        "kolibri1",
        "Kolibri1SparseMoeBlock(Kolibri1Config(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_local_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32))",
    ),
    "laguna": (
        "laguna",
        "LagunaSparseMoeBlock(LagunaConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32))",
    ),
    "lara_mini": (
        "lara_mini",
        "LaraMiniSparseMoeBlock(LaraMiniConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32))",
    ),
    "lfm2_moe": (
        "lfm2_moe",
        "Lfm2MoeSparseMoeBlock(Lfm2MoeConfig(hidden_size=64, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2))",
    ),
    "llama4": (
        "llama4",
        "Llama4TextMoe(Llama4TextConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "longcat_flash": (
        "longcat_flash",
        "LongcatFlashMoE(LongcatFlashConfig(hidden_size=64, n_routed_experts=8, moe_topk=2, expert_ffn_hidden_size=32, zero_expert_num=0))",
    ),
    "longcat_flash.zero": (
        "longcat_flash",
        "LongcatFlashMoE(LongcatFlashConfig(hidden_size=64, n_routed_experts=8, moe_topk=2, expert_ffn_hidden_size=32, zero_expert_num=4))",
    ),
    "mellum": (
        "mellum",
        "MellumSparseMoeBlock(MellumConfig(hidden_size=64, moe_intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "mimo_v2_flash": (
        "mimo_v2_flash",
        "MiMoV2FlashMoE(MiMoV2FlashConfig(hidden_size=64, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1))",
    ),
    "minimax": (
        "minimax",
        "MiniMaxSparseMoeBlock(MiniMaxConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "minimax_m2": (
        "minimax_m2",
        "MiniMaxM2SparseMoeBlock(MiniMaxM2Config(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "minimax_m3_vl": (
        "minimax_m3_vl",
        "MiniMaxM3VLSparseMoeBlock(MiniMaxM3VLTextConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2, shared_intermediate_size=32))",
    ),
    "mistral4": (
        "mistral4",
        "Mistral4MoE(Mistral4Config(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "mistral_large4": (
        "mistral_large4",
        "MistralLarge4TextMoE(MistralLarge4TextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "mixtral": (
        "mixtral",
        "MixtralSparseMoeBlock(MixtralConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "muse_spark": (
        "muse_spark",
        "MuseSparkMoE(MuseSparkTextConfig(hidden_size=64, moe_intermediate_size=32, num_local_experts=8, num_experts_per_tok=2, moe_hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, n_group=1, topk_group=1, num_hidden_layers=2))",
    ),
    "nemotron_h": (
        "nemotron_h",
        "NemotronHMoE(NemotronHConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1, moe_shared_expert_intermediate_size=32), layer_idx=0)",
    ),
    "nllb_moe": (
        "nllb_moe",
        "NllbMoeSparseMLP(NllbMoeConfig(num_experts=8, d_model=64), ffn_dim=32)",
    ),
    "olmoe": (
        "olmoe",
        "OlmoeSparseMoeBlock(OlmoeConfig(hidden_size=64, intermediate_size=32, num_experts=8, num_experts_per_tok=2))",
    ),
    "openai_privacy_filter": (
        "openai_privacy_filter",
        "OpenAIPrivacyFilterMLP(OpenAIPrivacyFilterConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "phimoe": (
        "phimoe",
        "PhimoeSparseMoeBlock(PhimoeConfig(hidden_size=64, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "qwen2_moe": (
        "qwen2_moe",
        "Qwen2MoeSparseMoeBlock(Qwen2MoeConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32))",
    ),
    "qwen3_5_moe": (
        "qwen3_5_moe",
        "Qwen3_5MoeSparseMoeBlock(Qwen3_5MoeTextConfig(hidden_size=64, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32))",
    ),
    "qwen3_moe": (
        "qwen3_moe",
        "Qwen3MoeSparseMoeBlock(Qwen3MoeConfig(hidden_size=64, moe_intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "qwen3_next": (
        "qwen3_next",
        "Qwen3NextSparseMoeBlock(Qwen3NextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32))",
    ),
    "qwen3_omni_moe.talker": (
        "qwen3_omni_moe",
        "Qwen3OmniMoeTalkerTextSparseMoeBlock(Qwen3OmniMoeTalkerTextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_local_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32))",
    ),
    "qwen3_omni_moe.thinker": (
        "qwen3_omni_moe",
        "Qwen3OmniMoeThinkerTextSparseMoeBlock(Qwen3OmniMoeTextConfig(hidden_size=64, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2))",
    ),
    "qwen3_vl_moe": (
        "qwen3_vl_moe",
        "Qwen3VLMoeTextSparseMoeBlock(Qwen3VLMoeTextConfig(hidden_size=64, moe_intermediate_size=32, num_local_experts=8, num_experts_per_tok=2))",
    ),
    "qwen4_exp": (
        "qwen4_exp",
        "Qwen4ExpTextSparseMoeBlock(Qwen4ExpTextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=32))",
    ),
    "solar_open": (
        "solar_open",
        "SolarOpenMoE(SolarOpenConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1))",
    ),
    "step3p7": (
        "step3p7",
        "Step3p7SparseMoeBlock(Step3p7TextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, share_expert_dim=32), layer_idx=0)",
    ),
    "switch_transformers": (
        "switch_transformers",
        "SwitchTransformersSparseMLP(SwitchTransformersConfig(num_experts=8, d_model=64, d_ff=32, expert_capacity=64))",
    ),
    "unlimited_ocr": (
        "unlimited_ocr",
        "UnlimitedOcrTextMoe(UnlimitedOcrTextConfig(hidden_size=64, intermediate_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2))",
    ),
    "vitpose_backbone": (
        "vitpose_backbone",
        "VitPoseBackboneMoeMLP(VitPoseBackboneConfig(hidden_size=64, num_experts=8, part_features=16, mlp_ratio=1))",
    ),
    "zaya": (
        "zaya",
        "ZayaSparseMoeBlock(ZayaConfig(hidden_size=64, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=1, router_hidden_size=16), layer_idx=0)",
    ),
}


def build(family: str, seed: int = 7) -> nn.Module:
    """The family's block with seeded weights (normal, scale 0.1), on the CPU, in FP32."""
    import transformers

    module_name, call = BLOCKS[family]
    modeling = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
    try:
        configuration = importlib.import_module(
            f"transformers.models.{module_name}.configuration_{module_name}"
        )
    except ImportError:
        configuration = None
    names = {}
    for name in set(re.findall(r"\b([A-Z][A-Za-z0-9_]*)\(", call)):
        for owner in (modeling, configuration, transformers):
            value = getattr(owner, name, None) if owner is not None else None
            if value is not None:
                names[name] = value
                break
    block = eval(call, names)
    experts = getattr(block, "experts", None)
    config = getattr(experts, "config", None)
    if config is not None:
        # The per-expert loop, which the tests compare with.
        config._experts_implementation = "eager"
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(block.named_parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return block.eval()


EXPECTED: dict[str, str] = {
    "afmoe": "gated",
    "aria": "module",
    "axk1": "gated",
    "axk2": "gated",
    "bailing_hybrid": "gated",
    "beam": "module",
    "cohere2_moe": "gated",
    "dbrx": "refused: expert parameters not all stacked by expert (first dimension 8): none stacked",
    "deepseek_ocr2": "gated",
    "deepseek_v2": "gated",
    "deepseek_v3": "gated",
    "deepseek_v32": "gated",
    "deepseek_v4": "module",
    "deepseek_v4.hash": "module",
    "doge": "refused: no experts module under `experts`",
    "dots1": "gated",
    "dots3_note": "gated",
    "ernie4_5_moe": "gated",
    "ernie4_5_vl_moe": "refused: no experts module under `experts`",
    "exaone_moe": "gated",
    "flex_olmo": "gated",
    "flint": "gated",
    "glm4_moe": "gated",
    "glm4_moe_lite": "gated",
    "glm4v_moe": "gated",
    "glm5_next": "module",
    "glm_moe_dsa": "gated",
    "gpt_oss": "module",
    "granitemoe": "gated",
    "granitemoe_swa": "gated",
    "granitemoehybrid": "gated",
    "granitemoeshared": "gated",
    "hunyuan_v1_moe": "gated",
    "hy_v3": "gated",
    "hy_v4": "module",
    "hy_v4_vl": "module",
    "inkling": "gated",
    "inkling2": "module",
    "inkling2_loop": "module",
    "jamba": "gated",
    "jetmoe": "refused: no experts module under `experts`",
    "kimi_linear": "gated",
    "kolibri1": "gated",
    "laguna": "gated",
    "lara_mini": "gated",
    "lfm2_moe": "gated",
    "llama4": "refused: the experts module is not called as experts(hidden_states, top_k_index, top_k_weights) with stacked weights (TypeError: Llama4TextExperts.forward() takes 2 positional arguments but 4 were given)",
    "longcat_flash": "refused: the experts module does not say num_experts",
    "longcat_flash.zero": "refused: the experts module does not say num_experts",
    "mellum": "gated",
    "mimo_v2_flash": "gated",
    "minimax": "gated",
    "minimax_m2": "gated",
    "minimax_m3_vl": "module",
    "mistral4": "gated",
    "mistral_large4": "gated",
    "mixtral": "gated",
    "muse_spark": "refused: the experts module has submodules with weights",
    "nemotron_h": "module",
    "nllb_moe": "refused: experts kept as separate modules, not stacked weights",
    "olmoe": "gated",
    "openai_privacy_filter": "module",
    "phimoe": "gated",
    "qwen2_moe": "gated",
    "qwen3_5_moe": "gated",
    "qwen3_moe": "gated",
    "qwen3_next": "gated",
    "qwen3_omni_moe.talker": "gated",
    "qwen3_omni_moe.thinker": "gated",
    "qwen3_vl_moe": "gated",
    "qwen4_exp": "gated",
    "solar_open": "gated",
    "step3p7": "module",
    "switch_transformers": "refused: experts kept as separate modules, not stacked weights",
    "unlimited_ocr": "gated",
    "vitpose_backbone": "refused: experts kept as separate modules, not stacked weights",
    "zaya": "gated",
}


# Cases where the block itself does not run (its router keeps FP32 weights and refuses BF16
# inputs when the whole block is cast): the wrapped block is not compared there.
FAILS_ON_ITS_OWN: set[str] = {"inkling2 bfloat16", "inkling2_loop bfloat16"}

# Families whose experts decompose exactly in FP32 but not in BF16 (they accumulate their k
# outputs in FP32, not as transformers' eager loop adds them): refused in BF16 at construction.
REFUSED_IN_BF16: set[str] = {"openai_privacy_filter bfloat16"}
