// Runs before first paint (a classic, blocking script — tiny on purpose): applies the saved
// theme so a dark-theme user never sees a white flash. Everything else is in main.js.
(function () {
  try {
    var theme = localStorage.getItem('nexa.theme');
    if (theme === 'light' || theme === 'dark' || theme === 'auto') {
      document.documentElement.setAttribute('data-theme', theme);
    }
  } catch (e) { /* storage disabled: follow the system */ }
}());
