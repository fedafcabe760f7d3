# Small conveniences; CI runs .ci/run.
.PHONY: test-image clean-test-image

test-image:
	scripts/build-test-image.sh

clean-test-image:
	rm -rf images
