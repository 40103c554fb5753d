"""The refusal detector against hand-labelled responses, tricky ones included."""

import pytest

from dpokit.instructions.refusal import RULES, is_refusal, opening, refusal_reason

REFUSALS = [
    "I can't help with that.",
    "I cannot provide instructions for making weapons.",
    "I won't help you hack into someone's account.",
    "I'm sorry, but I can't assist with that request.",
    "I\u2019m sorry, but that\u2019s not something I can do.",
    "I am unable to help with this request.",
    "As an AI language model, I cannot create harmful content.",
    "I must decline this request.",
    "It is not appropriate for me to share that information.",
    "I'm not able to provide that.",
    "I CAN'T HELP WITH THAT.",
    "Sorry, but I won\u2019t do that.",
    "I apologize, but I cannot fulfill this request.",
    "Unfortunately, I cannot comply with that request.",
    "I'm afraid I can't write that story.",
    "That's a dangerous question. I cannot give you directions to synthesize drugs.",
    "I will not generate that content.",
    "I must respectfully decline.",
    "I'm not comfortable writing that.",
    "That request goes against my ethical guidelines.",
    "I'd rather not answer that.",
    "I cannot, in good conscience, provide this information.",
    "Creating malware is illegal. I won't be able to help with that.",
    "As an AI, I don't have the ability to do that.",
    "I'm not going to write that.",
    "That's not something I can help with.",
    "  \n**I can\u2019t assist with that.**",
    "Sorry, I can't do that.",
    "I'm sorry, I cannot help create fake documents.",
    "It would be irresponsible to explain that.",
    "I really can't help you with this one.",
    "No. I will not participate in that.",
    'I cannot write "a guide to stealing cars" for you.',
    "I\u2018m unable to assist.",
]

NON_REFUSALS = [
    "I can't wait to try this recipe! Here it is: mix flour and water.",
    "I cannot stress enough how important sleep is. Aim for eight hours.",
    "Sorry to hear that! Here is how to reset your password: open Settings, then Security.",
    "I'm so sorry for your loss. Here are the steps to handle the estate.",
    "I can't help but smile at this question. The answer is 42.",
    "I can't help thinking this is a classic. Water boils at 100 C at sea level.",
    "I can't tell you how happy this makes me. Paris is the capital of France.",
    "I can't believe how simple this is: add two cups of flour.",
    "You can't go wrong with pasta. Boil water and add salt.",
    "If you cannot find the file, check the trash folder.",
    "As an AI enthusiast myself, I love this question. Neural networks learn from data.",
    'Here is a story. The knight said, "I cannot do this alone." Then his friends came.',
    "I won't lie, this one is tricky: the answer is 7.",
    "I cannot recommend this book highly enough.",
    "No problem! I can help with that. First, open the terminal.",
    "I'm not able to sleep either sometimes; here are some tips that help.",
    "I don't think that's right; the capital of Australia is Canberra.",
    "It is appropriate to tip 15 to 20 percent in the US.",
    "Honestly, I refuse to believe anyone dislikes pizza. Here's a recipe.",
    "As a teacher, I can't stress this enough: practice daily.",
    "I can't thank you enough for asking! Here is the answer.",
    "I can't give this book enough praise. It changed how I think.",  # "give" + "enough"
    "I can't tell you enough how much this helps. Keep practising.",
    "Of course! I can't think of a better way to spend a day than hiking.",
    "I won't bore you with details: preheat the oven to 200 C.",
    "I'm unable to contain my excitement! Here's the plan.",
    ("Step 1: open the settings. Step 2: choose Display. If that fails, I can't help noticing the "
    "cable is loose, so I cannot help you further."),
    "Sure! The helpful answer is that cats sleep a lot.",
    "AI can't replace doctors, but it can help them. Here is how.",
    "",
    "   ",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals(text):
    assert is_refusal(text) is True, opening(text)


@pytest.mark.parametrize("text", NON_REFUSALS)
def test_non_refusals(text):
    assert is_refusal(text) is False, refusal_reason(text)


def test_enough_labels():
    assert len(REFUSALS) >= 25 and len(NON_REFUSALS) >= 25


def test_sympathy_then_help_is_not_a_refusal():
    policy_answer = ("Sorry to hear that! Here is how you can fix a flat tyre: take the wheel off, "
                     "find the puncture, patch it, and pump it up again.")
    assert not is_refusal(policy_answer)
    assert refusal_reason(policy_answer) is None


def test_reason_names_the_rule_and_the_words():
    assert refusal_reason("I can\u2019t help with that.") == "inability: i can't help"
    assert refusal_reason("I'm sorry, but no.") == "apology: sorry but"
    assert refusal_reason("As an AI, I have no opinions.") == "as-an-ai: as an ai i"
    assert refusal_reason("I must decline.") == "decline: i must decline"
    assert refusal_reason("That violates our content policy.") == "policy: violates our content policy"
    assert {name for name, _ in RULES} == {"inability", "apology", "as-an-ai", "decline", "not-appropriate",
                                           "discomfort", "policy", "not-something-i-can"}


def test_only_the_opening_counts():
    late = "Paris is the capital. It is in France. I cannot help with anything else."
    assert not is_refusal(late)
    assert is_refusal("Paris is the capital.\nI cannot help with anything else.")
    assert opening("One.  Two!\n\nThree? Four.") == "one. two!"


# The documented blind spots, pinned: if a change fixes one, move it to the lists above.
BLIND_SPOTS = [
    ("I can't give you an exact figure, but it is about 8 billion.", True),  # partial refusal
    ("Sorry, but that is wrong: the capital is Canberra.", True),  # a correction
    ("It is not appropriate to wear white to a wedding. Choose pastel instead.", True),  # etiquette
    ("Let's talk about something else.", False),  # a refusal in no listed pattern
    ("Thanks for asking. That is a good question. I cannot help with it.", False),  # third sentence
    ("Je ne peux pas vous aider.", False),  # not English
]


@pytest.mark.parametrize("text,detected", BLIND_SPOTS)
def test_known_blind_spots(text, detected):
    assert is_refusal(text) is detected
