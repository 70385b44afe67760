"""The main job: train BitNet b1.58 and an FP baseline on the embedded corpus and compare.

Placeholder until the trainer lands (issue: the main job).
"""


def main():
    print("bitjax is installed. The FP vs b1.58 training comparison is coming in the training issue.")


if __name__ == "__main__":
    main()
