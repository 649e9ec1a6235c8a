// Package browsertest checks keybroker from a real browser: Debian's
// headless Chromium, driven through the DevTools protocol (chromedp),
// loads a page from a second origin that calls keybroker with the
// browser SDK (sdk/js) — or, in the original client's test, with the
// original service's requests only — so that CORS preflights,
// credentials and WebCrypto are the browser's own.
//
// The package has only tests. They need Chromium (KEYBROKER_CHROMIUM or
// chromium on the PATH) and the SDK's npm packages (npm ci in sdk/js);
// .ci/run installs both. Without them the tests skip with a loud message,
// and fail when CI=true.
package browsertest
