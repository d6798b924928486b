"""The official state-dict layout (key, shape, fill rule) of every official GLIP checkpoint, derived from the two
reference tables and the official configs.

Two layouts were exported from the official code (``shared/reference``): GLIP-T as built by
``configs/pretrain/glip_Swin_T_O365_GoldG.yaml`` (746 keys) and GLIP-L by ``configs/pretrain/glip_Swin_L.yaml``
(1022 keys). Every other official checkpoint's layout follows from its config (microsoft/GLIP, commit 9dda955;
the model zoo table of its README, lines 84-88, names the config of each file):

* GLIP-T (B), ``glip_tiny_model_o365.pth``: ``glip_Swin_T_O365.yaml``. Its ``MODEL`` section is line for line
  the one of ``glip_Swin_T_O365_GoldG.yaml`` (the two files differ only in ``DATASETS.TRAIN``), so the layout is
  the GLIP-T (C) table.
* GLIP-T, ``glip_tiny_model_o365_goldg_cc_sbu.pth``: the model zoo gives ``glip_Swin_T_O365_GoldG.yaml`` as its
  config (footnote [6]: "only intended for zero-shot evaluation and fine-tuning"): the GLIP-T (C) table.
* The ``_lvisbest`` files are "the best checkpoint during the pre-training course" (footnote [3]) of the same
  run, with the same config as the file without the suffix: the same layout.
* GLIP-T (A), ``glip_a_tiny_o365.pth``: ``glip_A_Swin_T_O365.yaml``. Its ``MODEL`` section differs from
  ``glip_Swin_T_O365.yaml`` in two fields only, ``DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON: False`` and
  ``USE_FUSED_FEATURES_DOT_PRODUCT: False``; see :func:`late_fusion_rows` for the keys they remove.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from openglip.conformance import read_shape_table

from .conftest import require_reference

_TOWER = re.compile(r"rpn\.head\.dyhead_tower\.(\d+)\.(.+)")


def reference_rows(name: str) -> list[dict]:
    """The exported official table of ``shared/reference/<name>`` (``glip_t``: GLIP-T (C); ``glip_l``)."""
    return read_shape_table(require_reference(name) / "state_dict_shapes.tsv")


def late_fusion_rows(rows: list[dict]) -> list[dict]:
    """The layout of the deep-fusion table ``rows`` built with ``FUSE_CONFIG.EARLY_FUSE_ON: False``.

    microsoft/GLIP ``maskrcnn_benchmark/modeling/rpn/vldyhead.py``, ``VLDyHead.__init__``:

    * lines 597-641: for each of the ``NUM_CONVS`` blocks, ``if FUSE_CONFIG.EARLY_FUSE_ON`` appends ``VLFuse(cfg)``
      (``b_attn.*`` keys) and, for every block but the last or when ``USE_FUSED_FEATURES_DOT_PRODUCT`` (line 605),
      a ``BertEncoderLayer`` (``attention.*``, ``intermediate.*``, ``output.*``); the ``DyConv`` is appended in
      every case. Without early fusion the ``nn.Sequential`` ``dyhead_tower`` (line 643) therefore holds the six
      DyConvs alone, at indices 0-5 instead of 2, 5, ..., 17, with the same keys under each (the DyConv's
      arguments, lines 633-640, do not depend on fusion). ``USE_FUSED_FEATURES_DOT_PRODUCT`` only decides whether
      the last block has a text layer, and there is no text layer at all here.
    * lines 645-691: ``cls_logits``, ``bbox_pred``, ``centerness``, ``scales`` and, with
      ``USE_DOT_PRODUCT_TOKEN_LOSS: True`` (as in every official config), ``dot_product_projection_text``,
      ``log_scale``, ``bias_lang``, ``bias0``: independent of fusion, the same keys as GLIP-T (C).
      ``USE_FUSED_FEATURES_DOT_PRODUCT: False`` makes ``forward`` (line 746) use the text encoder's output
      (``language_dict_features["embedded"]``, vldyhead.py line 905) instead of the tower's: no parameter.
    * The language backbone (``language_backbone/bert_model.py``: ``BertModel(add_pooling_layer=False)``), the
      Swin-T + FPN body, the anchor generator and the absent ``mlm_head`` (``MLM_LOSS`` is False by default and
      in every config, line 722) do not depend on fusion either: their keys are the GLIP-T (C) ones.
    """
    out = []
    for row in rows:
        m = _TOWER.fullmatch(row["key"])
        if m is None:
            out.append(row)
            continue
        block, slot = divmod(int(m.group(1)), 3)
        if slot == 2:  # the DyConv of block `block` moves to index `block`
            out.append({**row, "key": f"rpn.head.dyhead_tower.{block}.{m.group(2)}"})
        # slots 0 (VLFuse) and 1 (BertEncoderLayer) do not exist without early fusion
    return out


def glip_t_c_rows() -> list[dict]:
    return reference_rows("glip_t")


def glip_t_a_rows() -> list[dict]:
    return late_fusion_rows(glip_t_c_rows())


def glip_l_rows() -> list[dict]:
    return reference_rows("glip_l")


# official model name (openglip.hub.OFFICIAL_MODELS) -> its layout
OFFICIAL_LAYOUTS: dict[str, Callable[[], list[dict]]] = {
    "glip_t_a": glip_t_a_rows,  # glip_A_Swin_T_O365.yaml: late fusion
    "glip_t_b": glip_t_c_rows,  # glip_Swin_T_O365.yaml: same MODEL section as (C)
    "glip_t_c": glip_t_c_rows,  # glip_Swin_T_O365_GoldG.yaml: the exported table
    "glip_t_c_lvisbest": glip_t_c_rows,
    "glip_t": glip_t_c_rows,  # glip_Swin_T_O365_GoldG.yaml (model zoo footnote [6])
    "glip_t_lvisbest": glip_t_c_rows,
    "glip_l": glip_l_rows,  # glip_Swin_L.yaml: the exported table
    "glip_l_lvisbest": glip_l_rows,
}
