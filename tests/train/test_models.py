"""chatalign.train.models: model loading checks that need no weights."""


import pytest
import torch

from chatalign.train.models import check_quantization_request


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("flags, name", [((True, False), "--load_in_4bit"), ((False, True), "--load_in_8bit")])
def test_quantization_on_cpu_is_a_clear_error(flags, name):
    with pytest.raises(ValueError, match=f"^{name} needs a CUDA GPU"):
        check_quantization_request(*flags)
    check_quantization_request(False, False)
