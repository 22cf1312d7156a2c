// The inspector page: follows the session's stream (server-sent events), shows
// the step under the cursor -- each context's object graph, an IOAS's address
// space, the selected object -- and the ioctl stream. Live, the cursor follows
// the run at a watchable pace; a finished run (or a recording) can be stepped
// through freely.
import { render } from 'preact';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { blockersOf, Model, stepFailure } from '../model.js';
import { Details } from './details.js';
import { GraphView, KIND_NAMES, Legend } from './graph.js';
import { IoasView } from './ioas.js';
import { Stream } from './stream.js';

type Sel = { ctx: number; id: number } | null;

function useSession(): { model: Model; version: number; connected: boolean } {
  const ref = useRef(new Model());
  const [version, setVersion] = useState(0);
  const [connected, setConnected] = useState(false);
  useEffect(() => {
    const es = new EventSource('/events');
    let queued = false;
    const bump = (): void => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        setVersion((v) => v + 1);
      });
    };
    es.onopen = () => {
      ref.current = new Model(); // every connection starts with the whole history
      setConnected(true);
      bump();
    };
    es.onmessage = (ev) => {
      ref.current.addLine(ev.data as string);
      bump();
    };
    es.onerror = () => setConnected(false);
    return () => es.close();
  }, []);
  return { model: ref.current, version, connected };
}

function stepFromHash(): number | null {
  const m = /step=(\d+)/.exec(location.hash);
  return m ? Number(m[1]) : null;
}

const PACES: [number, string][] = [[0, 'instant'], [120, 'fast'], [350, 'watch'], [900, 'slow']];

function App() {
  const { model, version, connected } = useSession();
  const steps = model.steps;
  const replay = model.hello?.mode === 'replay';
  const [following, setFollowing] = useState(true);
  const [cursor, setCursor] = useState(-1);
  const [pace, setPace] = useState(350);
  const [playing, setPlaying] = useState(false);
  const [sel, setSel] = useState<Sel>(null);
  const [ioasPick, setIoasPick] = useState<string | null>(null);

  // A link to a step (#step=N), or a recording: start there / at the run's fullest point.
  useEffect(() => {
    const want = stepFromHash();
    if (want !== null && steps.length >= want && cursor < 0) {
      setFollowing(false);
      setCursor(want - 1);
    } else if (replay && cursor < 0 && steps.length) {
      setFollowing(false);
      setCursor(fullest(model));
    }
  }, [version]);

  // Following a live run: advance one step per `pace` ms towards the newest.
  const last = steps.length - 1;
  useEffect(() => {
    if (!(following || playing) || cursor >= last) {
      if (playing && cursor >= last) setPlaying(false);
      return;
    }
    if (pace === 0 && following) {
      setCursor(last);
      return;
    }
    const t = setTimeout(() => setCursor((c) => Math.min(c + 1, last)), pace || 120);
    return () => clearTimeout(t);
  }, [following, playing, cursor, last, pace]);

  useEffect(() => {
    const onKey = (e: KeyboardEvent): void => {
      if ((e.target as HTMLElement).tagName === 'INPUT' || (e.target as HTMLElement).tagName === 'SELECT') return;
      const go = (i: number): void => { setFollowing(false); setPlaying(false); setCursor(Math.max(0, Math.min(last, i))); };
      if (e.key === 'ArrowRight') go(cursor + 1);
      else if (e.key === 'ArrowLeft') go(cursor - 1);
      else if (e.key === 'Home') go(0);
      else if (e.key === 'End') go(last);
      else return;
      e.preventDefault();
    };
    addEventListener('keydown', onKey);
    return () => removeEventListener('keydown', onKey);
  }, [cursor, last]);

  const step = cursor >= 0 ? steps[Math.min(cursor, last)] : undefined;
  const graph = step?.graph ?? { profile: model.hello?.profile ?? '', contexts: [] };
  const blockers = useMemo(() => (step ? blockersOf(step) : null), [step]);
  const pick = (i: number): void => { setFollowing(false); setPlaying(false); setCursor(i); history.replaceState(null, '', `#step=${steps[i]!.step}`); };

  const allIoas = graph.contexts.flatMap((c) => c.ioas.map((v) => ({ key: `${c.ctx}:${v.id}`, ctx: c.ctx, v })));
  const selObj = sel ? graph.contexts.find((c) => c.ctx === sel.ctx)?.objects.find((o) => o.id === sel.id) : undefined;
  const selIoas = selObj?.kind === 'IOAS' ? `${sel!.ctx}:${sel!.id}`
    : selObj?.kind === 'HWPT_PAGING' ? `${sel!.ctx}:${selObj.fields.ioas}` : null;
  const ioasShown = allIoas.find((x) => x.key === (selIoas ?? ioasPick)) ?? allIoas[0];

  const status = model.status;
  const statusText = !connected ? (status?.state === 'exited' ? 'finished (server gone)' : 'disconnected')
    : replay ? 'replaying a recording'
    : status?.state === 'waiting' ? 'waiting: the program starts now that this page is open'
    : status?.state === 'exited' ? `program exited with status ${status.exitStatus}`
    : status?.state === 'serving' ? 'serving' : 'running';
  const failures = steps.filter((s) => stepFailure(s)).length;

  return (
    <div class="app">
      <header>
        <h1>iommufd-emu inspector</h1>
        <span class={`status s-${connected ? status?.state ?? 'running' : 'off'}`} data-state={status?.state ?? ''}>{statusText}</span>
        {model.hello?.argv && <code class="argv">{model.hello.argv.join(' ')}</code>}
        <span class="abi">ABI {model.hello?.profile}</span>
        <div class="controls">
          <button title="first step (Home)" onClick={() => pick(0)} disabled={!steps.length}>◀◀</button>
          <button title="previous step (←)" onClick={() => pick(Math.max(0, cursor - 1))} disabled={cursor <= 0}>◀</button>
          <input type="range" min="0" max={Math.max(0, last)} value={Math.max(0, cursor)} aria-label="step"
            onInput={(e) => pick(Number((e.target as HTMLInputElement).value))} />
          <button title="next step (→)" onClick={() => pick(Math.min(last, cursor + 1))} disabled={cursor >= last}>▶</button>
          <button title="last step (End)" onClick={() => pick(last)} disabled={!steps.length}>▶▶</button>
          <button title="play from here" onClick={() => { setFollowing(false); setPlaying(!playing); }}>{playing ? 'pause' : 'play'}</button>
          <button title="the step with the most objects" onClick={() => pick(fullest(model))} disabled={!steps.length}>fullest</button>
          <label><input type="checkbox" checked={following} onChange={(e) => setFollowing((e.target as HTMLInputElement).checked)} /> follow</label>
          <select value={pace} onChange={(e) => setPace(Number((e.target as HTMLSelectElement).value))} aria-label="pace">
            {PACES.map(([ms, name]) => <option value={ms}>{name}</option>)}
          </select>
          <span class="pos" data-step={step?.step ?? 0}>step {step?.step ?? 0} / {steps.length}</span>
          {failures > 0 && <span class="fails">{failures} failed</span>}
        </div>
      </header>
      <main>
        <section class="left">
          {graph.contexts.length === 0 && <p class="empty">{steps.length ? 'no context open at this step' : 'no activity yet'}</p>}
          {graph.contexts.map((c) => (
            <div class="ctx" data-ctx={c.ctx}>
              <h2>context {c.ctx} <small>pid {c.pid} · {c.objects.length} objects · {c.references} reference{c.references === 1 ? '' : 's'}{c.closed ? ' · closed' : ''}</small></h2>
              <div class="graph-box">
                <GraphView ctx={c} selected={sel && sel.ctx === c.ctx ? sel.id : null} blockers={blockers}
                  onSelect={(id) => setSel({ ctx: c.ctx, id })} />
              </div>
            </div>
          ))}
          <Legend graph={graph} />
          {blockers && (
            <p class="blocked">IOMMU_DESTROY of {kindName(graph, blockers.ctx, blockers.target)} {blockers.target} failed with EBUSY:
              held by {blockers.holders.length} other user{blockers.holders.length === 1 ? '' : 's'} (highlighted).</p>
          )}
          {ioasShown && (
            <div class="ioas-box">
              {allIoas.length > 1 && (
                <select value={ioasShown.key} onChange={(e) => { setSel(null); setIoasPick((e.target as HTMLSelectElement).value); }}>
                  {allIoas.map((x) => <option value={x.key}>context {x.ctx} · IOAS {x.v.id}</option>)}
                </select>
              )}
              <IoasView ioas={ioasShown.v} />
            </div>
          )}
        </section>
        <section class="right">
          {sel
            ? <Details ctx={graph.contexts.find((c) => c.ctx === sel.ctx)} id={sel.id} onSelect={(id) => setSel({ ctx: sel.ctx, id })} />
            : <div class="obj-details"><p class="empty">Click an object to see its fields and who holds it.</p></div>}
          <h2>ioctl stream</h2>
          <Stream steps={steps} current={Math.max(0, Math.min(cursor, last))} onPick={pick} />
        </section>
      </main>
    </div>
  );
}

function kindName(graph: { contexts: { ctx: number; objects: { id: number; kind: string }[] }[] }, ctx: number, id: number): string {
  const k = graph.contexts.find((c) => c.ctx === ctx)?.objects.find((o) => o.id === id)?.kind ?? '';
  return KIND_NAMES[k] ?? k;
}

/** The first step after which the most objects were alive. */
function fullest(model: Model): number {
  let best = 0;
  let n = -1;
  model.steps.forEach((s, i) => {
    const k = s.graph.contexts.reduce((a, c) => a + c.objects.length, 0);
    if (k > n) {
      n = k;
      best = i;
    }
  });
  return best;
}

const root = document.getElementById('app')!;
root.textContent = '';
render(<App />, root);
