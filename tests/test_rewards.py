"""Reward functions: the verdicts eval would give, the papers' reward shapes."""

from still_cli.rewards import accuracy, code_use, format_reward, length, signed, strict_accuracy

GOOD = "<think>\n2 + 2 = 4\n</think>\n\nThe answer is \\boxed{4}."
WRONG = "<think>\n2 + 2 = 5\n</think>\n\nThe answer is \\boxed{5}."
UNBOXED = "<think>\n2 + 2 = 4\n</think>\n\nfour, I think"


def test_accuracy_grades_like_eval():
    assert accuracy([GOOD, WRONG, UNBOXED, "\\boxed{\\frac{8}{2}}"], ["4"] * 4) == [1.0, 0.0, 0.0, 1.0]
    # a truncated completion has no answer, even with a box in it (eval's policy)
    assert accuracy([GOOD], ["4"], truncated=[True]) == [0.0]


def test_signed_reward_is_still3():
    assert signed([GOOD, WRONG, UNBOXED], ["4"] * 3) == [1.0, -1.0, -2.0]


def test_format_reward_with_and_without_prefilled_think():
    plain = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    prefilled = plain + "<think>\n"
    body = GOOD[len("<think>"):]  # what the model writes when the template already opened <think>
    assert format_reward([GOOD, body], prompts=[plain, plain]) == [1.0, 0.0]
    assert format_reward([body, GOOD], prompts=[prefilled, prefilled]) == [1.0, 0.0]  # a second <think> is wrong
    assert format_reward(["<think></think>4", "<think>x</think>", "<think>a</think>b</think>c"],
                         prompts=[plain] * 3) == [0.0, 0.0, 0.0]


def test_strict_accuracy_needs_exact_tags():
    ok = "<think>2 + 2 = 4</think><answer>4</answer>"
    assert strict_accuracy([ok, ok.replace(">4<", ">5<"), GOOD, ok + " extra"], ["4"] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_length_shaping_prefers_short_correct_answers_within_a_group():
    short_ok, long_ok = GOOD, GOOD.replace("2 + 2 = 4", "2 + 2 = 4, let me recount " * 5)
    r = length([short_ok, long_ok, WRONG, "x"], ["4"] * 4, prompts=["p", "p", "p", "q"])
    assert r[0] == 0.5 and r[1] == -0.5  # shortest correct +0.5, longest correct -0.5
    assert r[2] <= 0.0                   # wrong answers never gain from being short
    assert r[3] == 0.0                   # a group of one has no spread


def test_code_use_penalises_only_useless_code():
    calls = [[], [{"output": "4", "error": None}], [{"output": "", "error": "NameError"}], [{"output": " "}]]
    assert code_use(["a"] * 4, tool_calls=calls) == [0.0, 0.0, -0.1, -0.1]
