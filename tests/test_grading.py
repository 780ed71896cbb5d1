import threading
import time

import pytest

from still_cli.grading import answers_match, extract_answer, grade, grade_batch, match_batch


@pytest.mark.parametrize("response, expected", [
    ("<think>maybe \\boxed{3}</think>\nSo the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("<think>I think \\boxed{3} but I am still thinking", None),          # unfinished thinking
    ("reasoning...</think> final: \\boxed{7}", "7"),                      # template pre-filled <think>
    ("First \\boxed{3}. Wait, that was step one. Final: \\boxed{5}", "5"),  # intermediate box loses
    ("We get \\boxed{3}, then \\boxed{\\frac{1}{", None),                  # cut off inside the last box
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
    ("\\fbox{12}", "12"),
    ("so \\boxed 9", "9"),
    ("The final answer is $42$.", "42"),
    ("The answer is 3.5.", "3.5"),
    ("Final Answer: x = 7", "x = 7"),
    ("Natalia sold 48 clips...\n#### 72", "72"),
    ("<|begin_of_thought|>hmm \\boxed{1}<|end_of_thought|>\n\n<|begin_of_solution|>Thus \\boxed{4}<|end_of_solution|>", "4"),
    ("<|begin_of_thought|>hmm \\boxed{1} and then", None),
    ("The answer is (B).", "(B)"),
    ("The answer is C. 42", "C"),  # the sentence ends at the letter
    ("no answer here", None),
    ("", None),
])
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_truncated_output_has_no_answer():
    assert extract_answer("... so \\boxed{12}", truncated=True) is None
    assert not grade("... so \\boxed{12}", "12", truncated=True)


@pytest.mark.parametrize("gold, pred", [
    ("1000", "1,000"), ("25", "025"), ("0.5", "\\frac{1}{2}"), ("\\frac{1}{2}", ".5"), ("3", "3.0"),
    ("50\\%", "50"), ("50\\%", "0.5"), ("0.5", "50%"), ("0.001", "1e-3"), ("1500", "1.5\\times10^{3}"),
    ("\\frac13", "0.\\overline{3}"), ("0.1\\overline{6}", "\\frac{1}{6}"), ("\\dfrac{3}{4}", "\\tfrac34"),
    ("-\\frac{3}{4}", "-0.75"), ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"), ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\pi", "\\pi"), ("2^{10}", "1024"), ("\\left(1,2\\right)", "(1,2)"), ("10", "10\\text{ cm}"),
    ("30^\\circ", "30"), ("\\text{(A)}", "A"), ("3", "x=3"), ("x=3", "3"), ("[2,5)", "[2,5)"),
    ("\\{1,2\\}", "\\{2,1\\}"), ("(1,2)", "(1,2)"), ("x^2+2x+1", "(x+1)^2"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("B", "(B)"), ("C", "C. 42"), ("\\$18.90", "18.90"),
])
def test_equivalent(gold, pred):
    assert answers_match(gold, pred)


@pytest.mark.parametrize("gold, pred", [
    ("[2,5)", "[2,5]"), ("(2,5)", "(2,5]"), ("\\sqrt{2}", "\\sqrt[3]{2}"), ("1+1/e", "1-1/e"),
    ("(1,2)", "(2,1)"), ("5", "-5"), ("0.333", "\\frac13"), ("2\\pi", "6.28"), ("C", "B"), ("B", "(C) 4"),
    ("\\{1,2\\}", "\\{1,3\\}"), ("12", "1,2"), ("x^2+1", "x^2-1"), ("50\\%", "5"), ("3", ""), ("7", None),
])
def test_near_misses_rejected(gold, pred):
    assert not answers_match(gold, pred)


def test_fast_path_does_not_import_sympy():
    import subprocess
    import sys

    code = ("import sys; from still_cli.grading import answers_match as m; "
            "assert m('1,000', '1000') and m('1/2', '0.5') and not m('3', '4') and m('50\\\\%', '0.5');"
            "print('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_pathological_input_is_bounded_on_main_thread_and_off_it():
    hard = ("2^{2^{2^{2^{2^{2}}}}}", "3^{3^{3^{3^{3}}}}")
    t = time.perf_counter()
    assert answers_match(*hard, timeout=1) is False
    assert time.perf_counter() - t < 6
    result = []
    th = threading.Thread(target=lambda: result.append(answers_match(*hard, timeout=1)))
    t = time.perf_counter()
    th.start()
    th.join(30)
    assert result == [False] and time.perf_counter() - t < 10


def test_off_main_thread_still_grades_symbolic_answers():
    result = []
    th = threading.Thread(target=lambda: result.append(answers_match("x^2+2x+1", "(x+1)^2")))
    th.start()
    th.join(60)
    assert result == [True]


def test_batch_matches_single_calls():
    golds = ["5", "x^2+2x+1", "[2,5)", "\\frac{1}{2}", "B", "\\sqrt{2}"]
    responses = ["\\boxed{5}", "\\boxed{(x+1)^2}", "\\boxed{[2,5]}", "The answer is 0.5", "The answer is (B)", "\\boxed{\\sqrt[3]{2}}"]
    expected = [True, True, False, True, True, False]
    assert grade_batch(responses, golds, workers=2) == expected
    assert [grade(r, g) for r, g in zip(responses, golds)] == expected
    assert match_batch(["1", "2"], [None, "2"]) == [False, True]


def test_public_case_set_is_graded_as_labelled():
    """The benchmark's hand-written case set (benchmarks/grading_cases.jsonl): every verdict right."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "grading_cases.jsonl"
    cases = [json.loads(x) for x in path.read_text().splitlines()]
    wrong = [c for c in cases if grade(c["response"], c["gold"]) != c["expected"]]
    assert len(cases) >= 70 and wrong == []
