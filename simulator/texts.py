"""Support texts with a known sentiment: templated, but varied enough not to be memorised.

Each text is built from a sentence template and slot vocabularies of its sentiment, with a
neutral subject line shared by all sentiments (so the words of the topic alone do not give the
label away). Pure: the caller passes its own `random.Random`.
"""

from __future__ import annotations

import random
from typing import Final, Literal

Sentiment = Literal["negative", "neutral", "positive"]
SENTIMENTS: Final[tuple[Sentiment, ...]] = ("negative", "neutral", "positive")

_FEATURES: Final = (
    "the dashboard", "the export", "billing", "the API", "the mobile app", "search",
    "the onboarding", "the reports", "notifications", "the integration", "login", "the editor",
    "sharing", "the CSV import", "the team settings", "the invoices",
)
_TEMPLATES: Final[dict[str, tuple[str, ...]]] = {
    "negative": (
        "{feature} {broke} {when}. {angry}",
        "{angry} {feature} {broke} and nobody answered.",
        "Again {feature} {broke}. {threat}",
        "I am {upset}: {feature} {broke} {when}. {threat}",
        "{feature} is {bad_adj}. {threat}",
        "Why is {feature} so {bad_adj}? {angry}",
    ),
    "neutral": (
        "How do I {task} with {feature}?",
        "Is there a way to {task} from {feature}?",
        "Question about {feature}: can we {task}?",
        "Where can I find how to {task}? It is about {feature}.",
        "Could you tell me if {feature} lets me {task}?",
        "We would like to {task} using {feature}. What are the steps?",
    ),
    "positive": (
        "{thanks} {feature} {works} {when}.",
        "{feature} is {good_adj}, {thanks_lc}",
        "{praise} {feature} {works}. {thanks}",
        "Just wanted to say {feature} is {good_adj}. {praise}",
        "{thanks} The team loves how {feature} {works}.",
        "I am {happy} with {feature}; it {works}.",
    ),
}
_SLOTS: Final[dict[str, tuple[str, ...]]] = {
    "broke": (
        "keeps crashing", "stopped working", "is broken", "fails every time", "lost our data",
        "charged us twice", "times out", "shows an error",
    ),
    "when": (
        "since the last update", "this morning", "for a week now", "every single day",
        "after the upgrade", "again today",
    ),
    "angry": (
        "This is unacceptable.", "Very frustrating.", "Terrible experience.",
        "I am really disappointed.", "Awful support.", "This is a waste of money.",
    ),
    "threat": (
        "We will cancel if this is not fixed.", "Please refund us.",
        "Thinking about switching to a competitor.", "I want to cancel my subscription.",
        "Worst tool we have paid for.",
    ),
    "upset": ("annoyed", "furious", "fed up", "very unhappy", "angry"),
    "bad_adj": ("slow", "confusing", "unreliable", "useless", "buggy", "painful"),
    "task": (
        "change the plan", "add a user", "export the data", "reset my password",
        "connect our CRM", "update the invoice address", "set up single sign-on",
        "change the time zone", "download last month's report",
    ),
    "thanks": (
        "Thanks a lot!", "Thank you so much.", "Many thanks.", "Great job, thanks!",
        "Thanks for the quick help.",
    ),
    "thanks_lc": ("thanks a lot!", "thank you!", "much appreciated.", "great work!"),
    "works": (
        "works perfectly", "works great", "is so fast", "saves us hours", "just works",
        "made our week",
    ),
    "good_adj": ("excellent", "fantastic", "really helpful", "amazing", "great", "brilliant"),
    "praise": ("Love it!", "Awesome product.", "Great support.", "Impressive.", "Brilliant."),
    "happy": ("very happy", "delighted", "impressed", "really pleased"),
}


def support_text(rng: random.Random, sentiment: Sentiment) -> str:
    """One message of the given sentiment."""
    template = rng.choice(_TEMPLATES[sentiment])
    values = {"feature": rng.choice(_FEATURES)}
    for slot, words in _SLOTS.items():
        if "{" + slot in template:
            values[slot] = rng.choice(words)
    text = template.format(**values)
    return text[0].upper() + text[1:]


def labelled_corpus(rng: random.Random, n_per_label: int) -> list[tuple[str, Sentiment]]:
    """`n_per_label` texts of each sentiment, labels taking turns (negative, neutral, positive,
    negative, ...): the shipped training corpus of the sentiment model
    (`scripts/gen-sentiment-corpus.py`)."""
    return [(support_text(rng, s), s) for _ in range(n_per_label) for s in SENTIMENTS]
