"""Progress reporting: stages write to a stream (the rule's log via stderr), or stay quiet when given None."""


def say(message: str, stream) -> None:
    if stream:
        print(message, file=stream, flush=True)
