"""Networks of the NeRFFaceSpeech family."""
