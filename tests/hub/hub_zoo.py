"""Tiny keras-hub models for tests, built from their constructors with random weights."""

import keras_hub
import numpy as np

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]


def bert_classifier(preprocessor: bool = True, dropout: float = 0.1):
    """A BERT text classifier; `dropout` as keras-hub's (0.1) unless given."""
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(VOCAB), num_layers=2, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16, max_sequence_length=16,
                                             dropout=dropout)
    pre = None
    if preprocessor:
        tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB)
        pre = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=pre, dropout=dropout)


def texts(n: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.array([" ".join(f"w{i}" for i in rng.integers(0, 45, 5)) for _ in range(n)])
    return x, rng.integers(0, 2, n)


def gemma_lm():
    backbone = keras_hub.models.GemmaBackbone(vocabulary_size=40, num_layers=2, num_query_heads=2,
                                              num_key_value_heads=1, hidden_dim=8, intermediate_dim=16, head_dim=4)
    return keras_hub.models.GemmaCausalLM(backbone, preprocessor=None)


def prompt():
    ids = np.array([[1, 5, 7, 0, 0, 0, 0, 0]], "int32")
    return {"token_ids": ids, "padding_mask": ids > 0}


def gemma3_lm():
    """A Gemma3 causal LM: its task calls the backbone by keyword, `backbone(inputs=...)`."""
    backbone = keras_hub.models.Gemma3Backbone(vocabulary_size=40, image_size=16, num_layers=2, num_query_heads=2,
                                               num_key_value_heads=1, hidden_dim=8, intermediate_dim=16, head_dim=4)
    return keras_hub.models.Gemma3CausalLM(preprocessor=None, backbone=backbone)


def token_ids(n: int = 16, seed: int = 0, length: int = 8, vocabulary: int = 50, segments: bool = True):
    """Token-id inputs as a keras-hub task takes them without a preprocessor, and labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocabulary, (n, length)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}
    if segments:
        x["segment_ids"] = np.zeros_like(ids)
    return x, rng.integers(0, 2, n)


GPT2_VOCAB = {"<|endoftext|>": 0, "a": 1, "b": 2, "c": 3, "Ġ": 4, "Ġa": 5, "Ġb": 6, "Ġc": 7}


def gpt2_lm(preprocessor: bool = True, dropout: float = 0.0):
    """A GPT-2 causal LM with a byte-pair tokenizer over the letters a, b and c: its
    preprocessor makes the labels (the next token) from the text."""
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=len(GPT2_VOCAB), num_layers=2, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=16, dropout=dropout)
    pre = None
    if preprocessor:
        tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=GPT2_VOCAB, merges=["Ġ a", "Ġ b", "Ġ c"])
        pre = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=8)
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=pre)


def letters(n: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    return np.array([" ".join(rng.choice(list("abc"), 4)) for _ in range(n)])


def image_classifier(preprocessor: bool = True):
    """A two-stage ResNet image classifier; its preprocessor resizes to 16x16 and scales."""
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block", image_shape=(None, None, 3))
    pre = None
    if preprocessor:
        converter = keras_hub.layers.ResNetImageConverter(image_size=(16, 16), scale=1 / 255.0)
        pre = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=3, preprocessor=pre)


def images(n: int = 12, seed: int = 0, size: int = 24):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3)).astype("uint8"), rng.integers(0, 3, n)
