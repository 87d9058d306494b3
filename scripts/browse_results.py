"""A local web page of benchmark results, the counterpart of FastChat's qa_browser (gradio, as FastChat's is).

    python scripts/browse_results.py --mt_bench_dirs outputs/mt_bench --arena_hard_dirs outputs/arena_hard \
        --alpaca_eval_dirs outputs/alpaca_eval --port 7860

Pick a benchmark, a judge and a question: the "Answers" tab shows the question, every model's answers, and the
judge's reasoning and score of each; the "Pairwise" tab puts two models side by side with both models' scores and the
games judged between them. The page only reads the files the run_* scripts wrote (chatalign.eval.browser).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatalign.configs import ChatalignParser


@dataclass
class BrowseArguments:
    mt_bench_dirs: list[str] | None = field(default=None, metadata={"help": "MT-Bench bench folders."})
    arena_hard_dirs: list[str] | None = field(default=None, metadata={"help": "Arena-Hard bench_dir folders."})
    alpaca_eval_dirs: list[str] | None = field(default=None, metadata={"help": "AlpacaEval output_dir folders."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (loopback: only this machine)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})


def build_app(index):
    """The gradio page over a ResultsIndex."""
    import gradio as gr

    from chatalign.eval.browser import render_pair, render_view

    def bench_changed(bench):
        judges, questions, models = index.judges(bench), index.questions(bench), index.models(bench)
        return (gr.update(choices=judges, value=judges[0] if judges else None),
                gr.update(choices=questions, value=questions[0][1] if questions else None),
                gr.update(choices=models, value=models[0] if models else None),
                gr.update(choices=models, value=models[-1] if models else None))

    def show(bench, judge, qid, model_a, model_b):
        if not bench or not qid:
            return "", ""
        single = render_view(index.view(bench, judge, qid))
        pair = render_pair(index.pair_view(bench, judge, qid, model_a, model_b)) if model_a and model_b else ""
        return single, pair

    benches = index.benchmarks()
    with gr.Blocks(title="chatalign results") as app:
        gr.Markdown("# chatalign results browser")
        with gr.Row():
            bench = gr.Dropdown(benches, value=benches[0], label="Benchmark", elem_id="bench")
            judge = gr.Dropdown([], label="Judge", elem_id="judge")
            question = gr.Dropdown([], label="Question", elem_id="question")
        with gr.Tab("Answers"):
            single = gr.Markdown(elem_id="single")
        with gr.Tab("Pairwise"):
            with gr.Row():
                model_a = gr.Dropdown([], label="Model A", elem_id="model_a")
                model_b = gr.Dropdown([], label="Model B", elem_id="model_b")
            pair = gr.Markdown(elem_id="pair")
        selectors = [bench, judge, question, model_a, model_b]
        # a dropdown set by another handler does not fire its own change: show() follows each explicitly
        bench.input(bench_changed, bench, [judge, question, model_a, model_b]).then(show, selectors, [single, pair])
        for control in selectors[1:]:
            control.input(show, selectors, [single, pair])
        app.load(bench_changed, bench, [judge, question, model_a, model_b]).then(show, selectors, [single, pair])
    return app


def main(argv=None, block: bool = True):
    (args,) = ChatalignParser([BrowseArguments]).parse(argv)
    from chatalign.eval.browser import ResultsIndex

    index = ResultsIndex(args.mt_bench_dirs or [], args.arena_hard_dirs or [], args.alpaca_eval_dirs or [])
    app = build_app(index)
    print(f"results browser: http://{args.host}:{args.port}", flush=True)
    app.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=not block, show_error=True)
    return app


if __name__ == "__main__":
    main()
