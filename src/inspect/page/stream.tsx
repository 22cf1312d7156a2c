// The ioctl stream: one row per step (decoded ioctl line, result, the failing
// check's reason); the current step opens to its fields and inner events.
import { useEffect, useRef } from 'preact/hooks';
import { eventText, stepFailure, stepTitle, type Step } from '../model.js';

/** Rows rendered around the current step (the rest are summarised). */
const WINDOW = 300;

export function Stream({ steps, current, onPick }: { steps: Step[]; current: number; onPick(i: number): void }) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const row = box.current?.querySelector('.row.current') as HTMLElement | null;
    row?.scrollIntoView({ block: 'nearest' });
  }, [current, steps.length]);
  const lo = Math.max(0, current - WINDOW / 2);
  const hi = Math.min(steps.length, lo + WINDOW);
  return (
    <div class="stream" ref={box}>
      {lo > 0 && <div class="more">… {lo} earlier steps</div>}
      {steps.slice(lo, hi).map((s, k) => {
        const i = lo + k;
        const fail = stepFailure(s);
        const h = s.head;
        const who = h && 'pid' in h ? `${h.pid}${'tid' in h && h.tid !== undefined && h.tid !== h.pid ? `:${h.tid}` : ''}` : '';
        return (
          <div class={`row${i === current ? ' current' : ''}${fail ? ' failed' : ''}${s.ioctl ? ' ioctl' : ' other'}`}
            data-step={s.step} onClick={() => onPick(i)}>
            <div class="line">
              <span class="no">{s.step}</span>
              {who && <span class="pid">[{who}]</span>}
              <span class="text">{stepTitle(s)}</span>
            </div>
            {fail?.reason && <div class="reason">{fail.errno}: {fail.reason}</div>}
            {i === current && <StepDetails step={s} />}
          </div>
        );
      })}
      {hi < steps.length && <div class="more">… {steps.length - hi} later steps</div>}
    </div>
  );
}

function Fields({ title, parts }: { title: string; parts: string[] | null }) {
  if (!parts || parts.length === 0) return null;
  return (
    <table class="fields">
      <caption>{title}</caption>
      <tbody>
        {parts.map((p) => {
          const i = p.indexOf('=');
          return <tr><th>{p.slice(0, i)}</th><td>{p.slice(i + 1)}</td></tr>;
        })}
      </tbody>
    </table>
  );
}

function StepDetails({ step }: { step: Step }) {
  const io = step.ioctl;
  const events = step.events.filter((e) => e.t !== 'begin');
  return (
    <div class="details">
      {io && (
        <div class="structs">
          <Fields title={`${io.name} (as passed)`} parts={io.input} />
          <Fields title={`copied back (result ${io.result})`} parts={io.output} />
        </div>
      )}
      {events.length > 0 && (
        <ul class="events">
          {events.map((e) => <li class={`ev t-${e.t}`}>{eventText(e)}</li>)}
          {step.eventsDropped ? <li class="ev">… {step.eventsDropped} more events not kept</li> : null}
        </ul>
      )}
      <div class="time">{step.time.toFixed(3)} ms</div>
    </div>
  );
}
