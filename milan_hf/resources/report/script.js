(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var layers = data.layers, scoreNames = data.score_names, units = data.units;
  var pageSize = data.page_size;
  var search = document.getElementById("search");
  var layerSelect = document.getElementById("layer");
  var sortSelect = document.getElementById("sort");
  var hideDead = document.getElementById("hide-dead");
  var list = document.getElementById("units");
  var pagers = [document.getElementById("pager-top"), document.getElementById("pager-bottom")];
  var page = 1;

  // Lower-cased text searched for each unit: its description and any human descriptions.
  units.forEach(function (unit) {
    unit.text = ((unit.d || "") + " " + (unit.h || []).join(" ")).toLowerCase();
  });

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;  // text, never markup
    return node;
  }

  function option(value, label) {
    var node = el("option", "", label);
    node.value = value;
    return node;
  }

  var counts = {};
  units.forEach(function (unit) { counts[unit.l] = (counts[unit.l] || 0) + 1; });
  layers.forEach(function (name, index) {
    layerSelect.appendChild(option(name, name + " (" + (counts[index] || 0) + ")"));
  });
  scoreNames.forEach(function (name, index) {
    sortSelect.appendChild(option("s" + index + ":desc", name + ", high to low"));
    sortSelect.appendChild(option("s" + index + ":asc", name + ", low to high"));
  });

  function formatNumber(value) {
    if (value === null || value === undefined) return "n/a";
    var magnitude = Math.abs(value);
    if (magnitude !== 0 && (magnitude >= 1e4 || magnitude < 1e-3)) return value.toExponential(2);
    return value.toFixed(3);
  }

  function readState() {
    var params = new URLSearchParams(location.hash.replace(/^#/, "") || location.search);
    search.value = params.get("q") || "";
    var layer = params.get("layer") || "";
    layerSelect.value = layers.indexOf(layer) >= 0 ? layer : "";
    var sort = params.get("sort") || "";
    sortSelect.value = sort;
    if (sortSelect.value !== sort) sortSelect.value = "";
    hideDead.checked = params.get("dead") === "hide";
    page = Math.max(1, parseInt(params.get("page"), 10) || 1);
  }

  function writeState() {
    var params = new URLSearchParams();
    if (search.value) params.set("q", search.value);
    if (layerSelect.value) params.set("layer", layerSelect.value);
    if (sortSelect.value) params.set("sort", sortSelect.value);
    if (hideDead.checked) params.set("dead", "hide");
    if (page > 1) params.set("page", String(page));
    var hash = params.toString();
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }

  function matchingUnits() {
    var terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    var layer = layerSelect.value ? layers.indexOf(layerSelect.value) : -1;
    var matches = units.filter(function (unit) {
      if (layer >= 0 && unit.l !== layer) return false;
      if (hideDead.checked && unit.x) return false;
      return terms.every(function (term) { return unit.text.indexOf(term) >= 0; });
    });
    var sort = /^s(\d+):(asc|desc)$/.exec(sortSelect.value);
    if (sort) {
      var score = Number(sort[1]), sign = sort[2] === "asc" ? 1 : -1;
      matches.sort(function (a, b) {
        var x = a.s[score], y = b.s[score];
        if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1;
        if (y === null || y === undefined) return -1;
        return sign * (x - y) || a.l - b.l || a.u - b.u;
      });
    }
    return matches;
  }

  function unitCard(unit, showLayer) {
    var card = el("article", unit.x ? "unit dead" : "unit");
    card.setAttribute("data-layer", layers[unit.l]);
    card.setAttribute("data-unit", String(unit.u));
    var head = el("div", "unit-head");
    head.appendChild(el("span", "unit-name",
      (showLayer ? layers[unit.l] + " \u00b7 " : "") + "unit " + unit.u));
    if (unit.d !== null && unit.d !== undefined) {
      head.appendChild(el("p", "description", unit.d));
    } else {
      head.appendChild(el("p", "description missing", "no description"));
    }
    if (unit.x) head.appendChild(el("span", "badge", "dead"));
    // Filler: the description names no concept (a region alone, "nothing in particular").
    if (unit.f) {
      card.className += " no-concept";
      head.appendChild(el("span", "badge no-concept", "no concept named"));
    }
    // Verification replaced what PMI decoding chose: say what it was.
    if (unit.p) head.appendChild(el("span", "replaced", "verification replaced the PMI choice \u201c"
      + unit.p + "\u201d"));
    // Verification: a description its unit barely responds to is flagged (faithfulness AUC).
    var faithful = scoreNames.indexOf("faithfulness_auc");
    var auc = faithful >= 0 && unit.s.length ? unit.s[faithful] : null;
    if (auc !== null && auc !== undefined && auc < data.low_faithfulness_auc) {
      card.className += " low-faithfulness";
      head.appendChild(el("span", "badge low-faithfulness",
        "low faithfulness (AUC " + formatNumber(auc) + ")"));
    }
    card.appendChild(head);

    var scores = el("dl", "scores");
    function score(name, value) {
      var item = el("div");
      item.appendChild(el("dt", "", name));
      item.appendChild(el("dd", "", formatNumber(value)));
      scores.appendChild(item);
    }
    // Units without a description row have no scores: show none rather than a row of n/a.
    if (unit.s.length) scoreNames.forEach(function (name, index) { score(name, unit.s[index]); });
    if (unit.a.length) score("top activation", unit.a[0]);
    score("threshold", unit.th);
    card.appendChild(scores);

    if (unit.t) {
      var img = el("img", "strip");
      img.loading = "lazy";
      img.decoding = "async";
      img.width = unit.w;
      img.height = unit.ht;
      img.alt = "exemplars of " + layers[unit.l] + " unit " + unit.u;
      img.title = "activations: " + unit.a.map(formatNumber).join(", ");
      img.src = unit.t;
      card.appendChild(img);
    } else {
      card.appendChild(el("p", "no-images", "no exemplar images"));
    }
    if (unit.h && unit.h.length) {
      var human = el("ul", "human");
      unit.h.forEach(function (text) { human.appendChild(el("li", "", text)); });
      card.appendChild(human);
    }
    return card;
  }

  function renderPager(pager, pages, first, last, total) {
    pager.textContent = "";
    var previous = el("button", "previous", "previous");
    previous.type = "button";
    previous.disabled = page <= 1;
    previous.addEventListener("click", function () { goTo(page - 1); });
    var next = el("button", "next", "next");
    next.type = "button";
    next.disabled = page >= pages;
    next.addEventListener("click", function () { goTo(page + 1); });
    pager.appendChild(previous);
    pager.appendChild(el("span", "page-status", "page " + page + " of " + pages));
    pager.appendChild(next);
    pager.appendChild(el("span", "match-status", total ?
      "units " + first + "\u2013" + last + " of " + total + " matching (" + units.length +
      " in all)" : "no matching units (" + units.length + " in all)"));
  }

  function render() {
    var matches = matchingUnits();
    var pages = Math.max(1, Math.ceil(matches.length / pageSize));
    page = Math.min(page, pages);
    var start = (page - 1) * pageSize;
    var shown = matches.slice(start, start + pageSize);
    var byLayer = !sortSelect.value;
    var fragment = document.createDocumentFragment();
    var lastLayer = -1;
    shown.forEach(function (unit) {
      if (byLayer && unit.l !== lastLayer) {
        fragment.appendChild(el("h2", "layer-heading", layers[unit.l]));
        lastLayer = unit.l;
      }
      fragment.appendChild(unitCard(unit, !byLayer));
    });
    if (!shown.length) fragment.appendChild(el("p", "empty", "No unit matches."));
    list.textContent = "";
    list.appendChild(fragment);
    pagers.forEach(function (pager) {
      renderPager(pager, pages, start + 1, start + shown.length, matches.length);
    });
  }

  function goTo(target) {
    page = target;
    writeState();
    render();
    window.scrollTo(0, 0);
  }

  var typing = null;
  search.addEventListener("input", function () {
    clearTimeout(typing);
    typing = setTimeout(function () { page = 1; writeState(); render(); }, 120);
  });
  [layerSelect, sortSelect, hideDead].forEach(function (control) {
    control.addEventListener("change", function () { page = 1; writeState(); render(); });
  });
  document.getElementById("controls").addEventListener("submit", function (event) {
    event.preventDefault();
  });
  window.addEventListener("hashchange", function () { readState(); render(); });

  readState();
  render();
})();
