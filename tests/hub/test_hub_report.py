"""The report's mode column on keras-hub models: containers are judged by what is inside
them, not by their class being outside Keras."""

import keras_hub

import frostline as fl
from hub_zoo import VOCAB


def _bert(dropout):
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=16, dropout=dropout)
    return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None, dropout=dropout)


def _modes(model):
    return {r.path: r.mode for r in fl.report(model).rows}


def test_a_frozen_backbone_without_dropout_computes_the_same_either_way():
    model = _bert(0.0)
    fl.apply(model, fl.Plan().freeze("bert_backbone"))
    modes = _modes(model)
    assert modes["bert_backbone"] == "-" and modes["bert_backbone/transformer_layer_0"] == "-"
    assert set(modes.values()) == {"-"}, {k: v for k, v in modes.items() if v != "-"}


def test_a_backbone_with_dropout_is_training_until_an_inference_rule_selects_it():
    model = _bert(0.1)
    fl.apply(model, fl.Plan().freeze("bert_backbone"))
    modes = _modes(model)
    assert modes["bert_backbone"] == "training" and modes["bert_backbone/transformer_layer_0"] == "training"
    fl.apply(model, fl.Plan().inference("bert_backbone"))
    modes = _modes(model)
    assert modes["bert_backbone"] == "inference" and modes["bert_backbone/transformer_layer_0"] == "inference"
