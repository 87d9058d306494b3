"""chatalign.data.tokenizers: pad tokens distinct from eos and template stop tokens."""





from transformers import AutoModelForCausalLM, AutoTokenizer

from chatalign.data.tokenizers import ensure_pad_token, set_stop_tokens


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
