"""Finding the first stop string in a growing text, and holding back what may start one."""

from lmserve.output_processing.stop_checker import StopChecker, StopMatch


def test_stop_string_spanning_the_old_and_new_text_is_found():
    checker = StopChecker(["STOP"], include_stop_str_in_output=False)

    assert checker.find("Hello ST", num_new_chars=2) is None
    assert checker.find("Hello STOP!", num_new_chars=3) == StopMatch("Hello ", "STOP")


def test_stop_string_can_be_kept_in_the_text():
    checker = StopChecker(["STOP"], include_stop_str_in_output=True)

    assert checker.find("Hello STOP and more", num_new_chars=15) == StopMatch("Hello STOP", "STOP")


def test_earliest_of_several_stop_strings_wins():
    checker = StopChecker(["late", "early", "y"], include_stop_str_in_output=False)

    assert checker.find("an early and late end", num_new_chars=21) == StopMatch("an ", "early")


def test_of_two_stop_strings_starting_together_the_shorter_wins():
    checker = StopChecker(["abcd", "ab"], include_stop_str_in_output=True)

    assert checker.find("xabcd", num_new_chars=5) == StopMatch("xab", "ab")


def test_only_matches_ending_in_the_new_text_are_searched():
    checker = StopChecker(["ab", "long-stop"], include_stop_str_in_output=False)

    # "ab" lies wholly in the old text: an earlier check would have found it, this one skips it.
    assert checker.find("ab" + "x" * 20 + "ab", num_new_chars=1) == StopMatch("ab" + "x" * 20, "ab")


def test_held_back_characters_are_the_longest_tail_that_starts_a_stop_string():
    checker = StopChecker(["<end>", "xyz"], include_stop_str_in_output=False)

    assert checker.num_held_back_chars("text <en") == 3
    assert checker.num_held_back_chars("text x") == 1
    assert checker.num_held_back_chars("text <a") == 0
    assert checker.num_held_back_chars("") == 0


def test_nothing_is_held_back_when_stop_strings_are_kept():
    checker = StopChecker(["<end>"], include_stop_str_in_output=True)

    assert checker.num_held_back_chars("text <en") == 0
