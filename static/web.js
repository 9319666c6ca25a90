// Progressive enhancement for var_keeper's page: ask before a delete, in the page itself.
// Without JavaScript the same button leads to a confirmation page on the server instead.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!form.matches("form.delete") || form.elements.namedItem("confirmed")) {
    return;
  }
  if (!window.confirm(`Delete the variable “${form.dataset.name}”?`)) {
    event.preventDefault();
    return;
  }
  const confirmed = document.createElement("input");
  confirmed.type = "hidden";
  confirmed.name = "confirmed";
  confirmed.value = "yes";
  form.append(confirmed);
});
