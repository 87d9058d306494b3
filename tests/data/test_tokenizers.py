"""chatalign.data.tokenizers: pad tokens distinct from eos, eos and sep prepared or set as asked, template stops, the
tokenizer fingerprint."""

import pytest
from helpers.special_tokens import EOS_ID, PAD_ID, VOCAB, save_without_special_tokens
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatalign.configs import ConfigError
from chatalign.data.tokenizers import (
    check_special_tokens,
    ensure_pad_token,
    prepare_special_tokens,
    set_stop_tokens,
    tokenizer_fingerprint,
)


def test_pad_reuses_an_existing_special_token(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.pad_token = tok.eos_token  # the SmolLM2 situation: pad == eos
    before = len(tok)
    assert ensure_pad_token(tok) == "set pad token to existing '<pad>'"
    assert tok.pad_token == "<pad>" and tok.pad_token != tok.eos_token and len(tok) == before


def test_pad_kept_when_distinct_or_asked(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert ensure_pad_token(tok) == "kept pad token '<pad>'"
    tok.pad_token = tok.eos_token
    assert ensure_pad_token(tok, keep_pad_equal_eos=True) == "kept pad token '<|im_end|>'"


def test_pad_added_and_embeddings_resized_only_when_needed(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {chr(c): i for i, c in enumerate(range(97, 123))}
    vocab["</s>"] = len(vocab)
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="</s>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")  # Llama/Mistral style: no pad, no unk
    tok.unk_token = None
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    rows = model.get_input_embeddings().weight.shape[0]
    action = ensure_pad_token(tok, model)
    assert tok.pad_token == "<pad>" and tok.pad_token_id == rows
    assert action == f"added pad token '<pad>' and resized embeddings {rows} -> 64"
    assert model.config.pad_token_id == tok.pad_token_id
    # Embeddings with spare rows (vocab padded to a multiple of 64 upstream): adding a token needs no resize.
    spare = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    fresh = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")
    fresh.unk_token = None
    assert ensure_pad_token(fresh, spare) == "added pad token '<pad>'"
    assert spare.get_input_embeddings().weight.shape[0] == 64


def test_stop_tokens_join_eos(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = set_stop_tokens(tok, model, ["<|im_end|>", "<|eot_id|>", "not a token"])
    assert ids == [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")]
    assert model.generation_config.eos_token_id == ids


def _letters_tokenizer_and_model(vocab_size=None):
    """A WordLevel tokenizer of the 26 letters with no special token at all, and a Llama with as many rows."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(vocab={chr(c): i for i, c in enumerate(range(97, 123))}, unk_token="z"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         bos_token_id=None, eos_token_id=None, pad_token_id=None))
    return tok, model


def test_missing_tokens_reuse_the_special_tokens_the_vocabulary_holds(tiny_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(save_without_special_tokens(tiny_tokenizer_dir, tmp_path / "tok"))
    assert (tok.eos_token, tok.pad_token, tok.sep_token, len(tok)) == (None, None, None, VOCAB)
    assert prepare_special_tokens(tok) == ["set eos token to existing '</s>'", "set pad token to existing '<pad>'",
                                           "set sep token to eos '</s>'"]
    assert (tok.eos_token, tok.pad_token, tok.sep_token) == ("</s>", "<pad>", "</s>")
    assert (tok.eos_token_id, tok.pad_token_id, tok.sep_token_id, len(tok)) == (EOS_ID, PAD_ID, EOS_ID, VOCAB)
    # Idempotent: a second pass (load_model after load_training_tokenizer) keeps them all.
    assert prepare_special_tokens(tok) == ["kept eos token '</s>'", "kept pad token '<pad>'", "kept sep token '</s>'"]


def test_tokens_the_vocabulary_lacks_are_added_and_the_model_grows_once():
    tok, model = _letters_tokenizer_and_model()
    assert prepare_special_tokens(tok) == ["added eos token '</s>'", "added pad token '<pad>'",
                                           "set sep token to eos '</s>'"]
    assert (tok.eos_token_id, tok.pad_token_id, tok.sep_token_id, len(tok)) == (26, 27, 26, 28)
    # The model comes later (training loads the tokenizer first): it grows to fit, and names the new ids.
    assert prepare_special_tokens(tok, model) == ["kept eos token '</s>'", "kept pad token '<pad>'",
                                                  "kept sep token '</s>'", "resized embeddings 26 -> 64"]
    assert model.get_input_embeddings().weight.shape[0] == 64
    assert (model.config.eos_token_id, model.config.pad_token_id) == (26, 27)
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (26, 27)
    # Nothing added: nothing resized.
    assert prepare_special_tokens(tok, model)[-1] == "kept sep token '</s>'"
    assert model.get_input_embeddings().weight.shape[0] == 64


def test_requested_tokens_win_over_the_rules_and_the_tokenizer(tiny_tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(save_without_special_tokens(tiny_tokenizer_dir, tmp_path / "tok"))
    _, model = _letters_tokenizer_and_model(vocab_size=VOCAB)
    model.generation_config.eos_token_id = 7  # a stop the checkpoint already has stays a stop
    asked = {"eos_token": "<|im_end|>", "pad_token": "<|pad|>", "sep_token": "<s>"}
    assert "<|pad|>" not in tok.get_vocab()
    assert prepare_special_tokens(tok, model, asked) == [
        "set eos token to existing '<|im_end|>'", "added pad token '<|pad|>'", "set sep token to existing '<s>'",
        "resized embeddings 1024 -> 1088"]
    assert (tok.eos_token_id, tok.pad_token_id, tok.sep_token_id) == (5, VOCAB, 2)
    assert (model.config.eos_token_id, model.config.pad_token_id) == (5, VOCAB)
    assert model.generation_config.eos_token_id == [5, 7]
    # A tokenizer that has its own eos: the request replaces it, and the pad moves off the new eos.
    own = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    own.pad_token = "</s>"
    assert prepare_special_tokens(own, requested={"eos_token": "</s>"})[:2] == [
        "set eos token to existing '</s>'", "set pad token to existing '<pad>'"]


def test_a_pad_that_is_the_eos_is_an_error_naming_the_key_and_where(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)  # eos <|im_end|>
    where = "block 'tiny' of 'blocks.yaml'"
    with pytest.raises(ConfigError, match=r"^special_tokens\.pad_token '<\|im_end\|>' in block 'tiny' of "
                                          r"'blocks\.yaml' is also the tokenizer's eos token"):
        prepare_special_tokens(tok, requested={"pad_token": "<|im_end|>"}, source=where)
    assert tok.pad_token == "<pad>"  # nothing changed before the error
    with pytest.raises(ConfigError, match=r"^special_tokens\.pad_token '</s>' in block 'tiny' of 'blocks\.yaml' "
                                          r"is also special_tokens\.eos_token"):
        check_special_tokens({"pad_token": "</s>", "eos_token": "</s>"}, source=where)
    with pytest.raises(ConfigError, match=r"^special_tokens in block 'tiny' of 'blocks\.yaml': unknown key 'pad'; "
                                          "expected pad_token, eos_token, sep_token"):
        check_special_tokens({"pad": "<pad>"}, source=where)
    with pytest.raises(ConfigError, match=r"^special_tokens\.sep_token: expected a token string, got ''"):
        check_special_tokens({"sep_token": ""})
    # keep_pad_equal_eos allows it, and pads with eos where the tokenizer has no pad.
    assert prepare_special_tokens(tok, requested={"pad_token": "<|im_end|>"}, keep_pad_equal_eos=True)[1] == (
        "set pad token to existing '<|im_end|>'")
    tok.pad_token = None
    assert prepare_special_tokens(tok, keep_pad_equal_eos=True)[1] == (
        "set pad token to eos '<|im_end|>' (keep_pad_equal_eos)")
    assert tok.pad_token_id == tok.eos_token_id == 5


def test_the_fingerprint_is_what_text_tokenises_to_not_the_last_calls_state(tiny_tokenizer_dir, tmp_path):
    from conftest import build_tiny_tokenizer

    tok, same = AutoTokenizer.from_pretrained(tiny_tokenizer_dir), AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    print_before = tokenizer_fingerprint(tok)
    assert len(print_before) == 64 and print_before == tokenizer_fingerprint(same)
    # A truncating call, then a padding one, leave their state on the Rust backend: still the same tokenizer.
    tok("some words to cut " * 20, truncation=True, max_length=4)
    assert tok.backend_tokenizer.truncation is not None
    assert tokenizer_fingerprint(tok) == print_before
    tok(["a", "a longer text"], padding=True)
    assert tok.backend_tokenizer.padding is not None
    assert tokenizer_fingerprint(tok) == print_before
    assert tok.backend_tokenizer.padding is not None  # the caller's tokenizer is left as it was
    # The chat template is hashed by the callers beside it, not in it.
    same.chat_template = "{{ messages[0]['content'] }}"
    assert tokenizer_fingerprint(same) == print_before
    # Another special token, another added token or another vocabulary is another tokenizer.
    same.eos_token = "<pad>"
    assert tokenizer_fingerprint(same) != print_before
    added = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    added.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    assert tokenizer_fingerprint(added) != print_before
    assert tokenizer_fingerprint(build_tiny_tokenizer(tmp_path / "other", vocab_size=900)) != print_before
