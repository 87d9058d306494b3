"""Reading saved checkpoints back in tests: their parameters, to tell whether training changed them."""


def state_dict(path):
    """A saved checkpoint's parameters (cloned tensors), by name."""
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}
